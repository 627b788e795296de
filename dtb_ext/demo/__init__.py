"""`dtb demo`: the bundled default QA model on a fixed sample of SQuAD dev-a, at full length and at the
configurations its shipped front offers for three budgets, in fp32 and in a second precision (default: the
fastest this machine runs natively, `--precision auto`), measured side by side; in PyTorch, and on request
(`--runtime torch,openvino,onnxruntime`) as the model's exported graph in OpenVINO or ONNX Runtime, one compiled
graph per precision serving every configuration.

For each configuration, runtime and precision it reports F1/EM on the same questions, the median latency of one
feature at batch 1 under two padding protocols (dynamic: the feature at its real length; max_length: padded to 384,
the paper's protocol), the speedup over the reference (torch fp32 at full length) under each, and the ideal speedup
from MACs at the real lengths. It writes a plot of F1 against speedup (the shipped front and the measured points)
and a JSON record.

Modules: configs.py (which configurations), runners.py (a model in one runtime and precision), measure.py (the F1
and latency loops over runners), run.py (`run_demo`), report.py (rows, JSON, the table), plot.py (the figure),
cli.py (the command).
"""
