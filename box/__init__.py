"""One box's whole pipeline: ``soundbus up`` (box.up) from flags or a config file (box.config).

It sits above the stage packages (it asks classify which rate a model needs), so it is not
part of ``common``, which no stage package's code may depend on in the other direction.
"""
