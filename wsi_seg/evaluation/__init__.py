"""Judging a prediction: ground truth readers (GeoJSON, ASAP/ImageScope XML, masks), IoU and
Dice, overlays and run summaries."""
