"""gdm: guided diffusion (ADM) as an experiment platform."""
__version__ = "0.1.0"
