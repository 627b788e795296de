"""Research scripts: measurements behind the design's choices, each run as `python -m dtb_ext.experiments.<name>`.

They sit above everything else (they may import any part of the library) and nothing in the library imports
them (tests/project/test_layering.py checks both), so a change here never changes what `dtb` or `dtb_ext.*` do.

- `drop_tolerance`: F1 and real-length MACs of a QA model at fixed ratio configurations, with an answer oracle
  that bounds what any significance source could keep.
- `int8_study`: the int8 recipe step by step (torch dynamic quantization, per-token activations, layers kept in
  float, SmoothQuant, the front's picks), F1 of each step against fp32.
"""
