"""inclinet: galaxy inclinations from images with ensembles of CNNs, as a scientific workflow."""

__version__ = "0.1.0"
