"""Plugin hook implementations of deqh (installed as ``deqh_plugins``): they register the
built-in backbones exactly as a third-party package would."""
