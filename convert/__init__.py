"""Original RAP / maskrcnn-benchmark checkpoints (.pth) -> rap_jax orbax variables checkpoints.

  pth_reader.py  torch-free, restricted-unpickler reader of both PyTorch serializations
  source.py      the model state_dict inside a checkpoint ('model' wrapper, 'module.' prefix)
  name_table.py  declarative table: original module names -> kind of layer
  hooks.py       per-kind layout changes (conv OIHW -> HWIO, linear transposes, ...)
  converter.py   state_dict -> variables tree + report
  cli.py         `python -m convert SRC.pth OUT_DIR [--config FILE] [-v] [--force]`

Nothing here imports torch.
"""
