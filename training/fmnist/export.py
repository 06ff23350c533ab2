"""ONNX export and the checks that must pass before a model ships.

The graph takes the already-normalised image `image` float32 [N,1,28,28] and
returns `logits` float32 [N,10]; N is dynamic.
"""

import hashlib
import logging
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 18  # the dynamo exporter's lowest native opset; 17 means a noisy down-conversion


class ExportCheckError(RuntimeError):
    pass


def export_onnx(model, path, opset=OPSET):
    """Export `model` (in eval mode, fp32, contiguous) to a single .onnx file."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = (torch.zeros(2, 1, 28, 28),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The exporter logs progress and missing-torchvision notes we don't need.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        prog = torch.onnx.export(
            model, example, dynamo=True, external_data=False, opset_version=opset,
            input_names=["image"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=65536)}},
            verbose=False,
        )
    m = prog.model_proto
    # The exporter records a stack trace per node, with the absolute paths of
    # the machine that ran it, plus its own bookkeeping on the graph and its
    # values. Useless to the daemon, and the paths are not ours to publish.
    for node in m.graph.node:
        del node.metadata_props[:]
    for coll in (m.graph.input, m.graph.output, m.graph.value_info, m.graph.initializer):
        for item in coll:
            del item.metadata_props[:]
    del m.graph.metadata_props[:]
    del m.metadata_props[:]
    m.doc_string = ""
    m.graph.doc_string = ""
    onnx.save_model(m, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    return path


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def session(path, threads=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_logits(sess, x, batch=500):
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([sess.run(["logits"], {"image": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def check_against_torch(path, model, x, labels, atol=1e-4):
    """Run the ONNX file and the PyTorch model on the same normalised images;
    raise if any logit differs by more than `atol` or any prediction differs."""
    sess = session(path, threads=2)
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    if inp.name != "image" or out.name != "logits" or inp.shape[1:] != [1, 28, 28]:
        raise ExportCheckError(f"unexpected signature: {inp.name} {inp.shape} -> {out.name} {out.shape}")
    got = ort_logits(sess, x)
    model = model.eval()
    with torch.no_grad():
        want = torch.cat([model(torch.from_numpy(x[i:i + 500])) for i in range(0, len(x), 500)]).numpy()
    diff = float(np.abs(got - want).max())
    acc_onnx = float((got.argmax(1) == labels).mean())
    acc_torch = float((want.argmax(1) == labels).mean())
    disagree = int((got.argmax(1) != want.argmax(1)).sum())
    if diff > atol:
        raise ExportCheckError(f"{path}: max |logit difference| {diff:.3g} > {atol}")
    if disagree or acc_onnx != acc_torch:
        raise ExportCheckError(f"{path}: {disagree} predictions differ; accuracy {acc_onnx} vs {acc_torch}")
    return {"max_abs_logit_diff": diff, "accuracy_onnx": acc_onnx, "accuracy_torch": acc_torch,
            "n_images": len(x)}


def latency(path, x, batch, repeats=5, min_calls=None):
    """Milliseconds per image at a given batch size on one intra-op thread:
    the median over a run of calls, the best of `repeats` such runs (the
    machine is shared, so the best run is the least disturbed one)."""
    sess = session(path, threads=1)
    xb = np.ascontiguousarray(x[:batch], dtype=np.float32)
    calls = min_calls or max(20, 2000 // batch)
    for _ in range(10):
        sess.run(["logits"], {"image": xb})
    medians = []
    for _ in range(repeats):
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            sess.run(["logits"], {"image": xb})
            times.append(time.perf_counter() - t)
        medians.append(float(np.median(times)))
    best = min(medians)
    return {"batch": batch, "ms_per_call": best * 1e3, "ms_per_image": best * 1e3 / batch,
            "calls_per_run": calls, "runs": repeats}
