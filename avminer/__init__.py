"""avminer: fleet data mining for autonomous-vehicle perception.

Data flows one way::

    sources (Kafka | drive log) -> mining.decode -> engines (ensemble) -> scoring -> selection -> sinks
                                                     ^ model releases (trainer)

``import avminer`` stays light: it never imports torch or tensorrt (see ``avminer.utils.imports``).
"""

__version__ = "0.1.0"
