"""Running the stages. One slide (:mod:`~wsi_seg.orchestration.pipeline`, which gathers the
names of the modules it is made of): its job prepared on the client
(:mod:`~wsi_seg.orchestration.job`), block tasks on workers
(:mod:`~wsi_seg.orchestration.blocks`, with the per-process slide handles of
:mod:`~wsi_seg.orchestration.handles` and the model warm-up of
:mod:`~wsi_seg.orchestration.warmup`), and its finishing task
(:mod:`~wsi_seg.orchestration.finish`) writing the typed report
(:mod:`~wsi_seg.orchestration.report`). Many slides with resume and failures kept per slide
(:mod:`~wsi_seg.orchestration.runner`, its records in :mod:`~wsi_seg.orchestration.records`),
where tasks run (:mod:`~wsi_seg.orchestration.cluster`), progress lines, the typed option
table (:mod:`~wsi_seg.orchestration.options`), and slide descriptions for ``wsi-seg info``
(:mod:`~wsi_seg.orchestration.describe`)."""
