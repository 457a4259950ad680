"""segray: tune, train and run image-segmentation models at cluster scale on Ray."""

__version__ = "0.1.0"
