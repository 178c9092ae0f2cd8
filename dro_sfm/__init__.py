"""dro-sfm: DRO structure-from-motion."""
__version__ = "0.1.0"
