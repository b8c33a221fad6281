"""Deploying a retrained net: standalone ONNX / TorchScript files with a parity check, prediction and a model card.

* :mod:`.dataset_info`: what a run's inputs look like (classes, channels, size, mean/std, image counts).
* :mod:`.inference`: the retrained net in inference form, optionally with the preprocessing in the graph.
* :mod:`.formats`: the export formats (ONNX, TorchScript): write a file, load it without NNI, run it.
* :mod:`.parity`: exported logits against PyTorch's on the run's test images.
* :mod:`.latency`: CPU latency of eager PyTorch, TorchScript and ONNX Runtime (torch.utils.benchmark).
* :mod:`.model_card`: ``model_card.json`` / ``model_card.md``.
* :mod:`.export`: ``nni-darts export``, all of the above into one folder, atomically.
* :mod:`.exported`: an exported folder read back (card checked, checksums verified) for ``predict`` / ``evaluate``.
* :mod:`.predict`: ``nni-darts predict``, images to class names.

Example::

    from nni_darts_ext.deploy.export import run_export
    from nni_darts_ext.deploy.predict import predict_files

    run_export("runs/demo")                       # runs/demo/export/model.onnx, model.ts, parity.json, model_card.*
    predict_files("runs/demo/export/model.onnx", ["seven.png"], top_k=3)
"""
