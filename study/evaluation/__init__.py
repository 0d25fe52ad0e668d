"""The parts of an evaluation; :mod:`study.evaluate` is the public entry and describes the layout."""
