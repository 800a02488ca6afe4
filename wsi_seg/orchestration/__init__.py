"""Running the stages: one slide (:mod:`~wsi_seg.orchestration.pipeline`), many slides
with resume and failures kept per slide (:mod:`~wsi_seg.orchestration.runner`), where tasks
run (:mod:`~wsi_seg.orchestration.cluster`), progress lines and the typed option table."""
