"""wsi-seg: tumour segmentation of gigapixel whole-slide images.

Stages, one module each, data flowing one way:
``slide`` -> ``tissue`` -> ``tiling`` -> ``infer`` + ``blend`` -> ``mosaic`` -> ``vectorize``
-> ``geojson`` -> ``metrics``; ``pipeline`` and ``cluster`` orchestrate them and ``cli`` is a
thin shell over the library.
"""

__version__ = "0.1.0"
