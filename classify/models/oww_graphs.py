"""openWakeWord's shipped ONNX graphs, rewritten so one call serves many streams.

Three rewrites of the files openWakeWord 0.5.1 ships (its ``resources/models``); no weight
changes, the same operators, so ONNX Runtime computes the same numbers per stream:

``batched_melspectrogram``
    melspectrogram.onnx ends like librosa's power_to_db with top_db: log-mel values are
    floored at (maximum - 8) -- but its maximum is taken over the whole input tensor,
    every row of a batch together, so a loud stream would raise the floor of a quiet one
    batched with it. Here the maximum is taken per row (ReduceMax over the row's frames
    and bins, then Max with that floor instead of a Clip, which takes only scalars):
    each row gets what it gets alone.

``streaming_embedding``
    embedding_model.onnx maps 76 mel frames (775 ms) to one 96-d embedding; openWakeWord
    runs it every 80 ms on the newest 76 frames, so 68 of them are recomputed each time.
    The network is convolutions that are *valid* (unpadded) in time, and three max-pools
    of stride 2 in time: its total time stride is 8 frames, exactly openWakeWord's step.
    So the embedding of each new 8-frame step can be computed from those 8 frames plus,
    before every time-kernel-3 convolution, the last 2 rows of that convolution's input
    from the previous step (its *context*). The rewritten graph takes ``mel`` (batch, 1,
    8, 32) and ``context`` (batch, CONTEXT) and returns ``embedding`` (batch, 96) and
    ``context_out`` (batch, CONTEXT): about 8x fewer operations, identical results
    (tests/classify/test_wakeword_batched.py compares it with the original graph).

``batched_head``
    each wake word's head takes (1, 16 or 22, 96) with a batch dimension fixed at 1;
    here the batch dimension is free. hey_jarvis's head ends in an ``If`` (when its score
    reaches a bound, a second "verifier" network rescores the window); an ``If`` needs
    one condition, so it becomes ``Where(condition, verifier score, score)``, which is
    the same per row (the verifier is computed for every row and kept where the
    condition holds).
"""

from __future__ import annotations

import numpy as np

STEP_FRAMES = 8  # mel frames per embedding step (80 ms); the embedding network's time stride
MEL_BINS = 32
EMBEDDING_DIM = 96


def batched_melspectrogram(path: str):
    """melspectrogram.onnx with its top-db floor taken per row, not over the batch; an onnx.ModelProto."""
    import onnx
    from onnx import helper

    model = onnx.load(path)
    g = model.graph
    nodes = list(g.node)
    reduce = [n for n in nodes if n.op_type == "ReduceMax"]
    clip = nodes[-1]
    if len(reduce) != 1 or clip.op_type != "Clip" or clip.input[0] != reduce[0].input[0]:
        raise ValueError(f"{path}: not openWakeWord 0.5.1's melspectrogram (expected ReduceMax ... Clip)")
    r = reduce[0]
    # (batch, 1, frames, 32) -> per-row maximum (batch, 1, 1, 1), which broadcasts in Max below
    per_row = helper.make_node("ReduceMax", list(r.input), list(r.output), axes=[1, 2, 3], keepdims=1)
    floor = helper.make_node("Max", [clip.input[0], clip.input[1]], list(clip.output))
    del g.node[:]
    g.node.extend([per_row if n is r else floor if n is clip else n for n in nodes])
    onnx.checker.check_model(model)
    return model


def streaming_embedding(path: str):
    """embedding_model.onnx as a streaming graph; returns (onnx.ModelProto, context floats per stream)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    src = shape_inference.infer_shapes(onnx.load(path))
    g = src.graph
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in g.value_info}
    nodes = list(g.node)
    head, tail, body = nodes[0], nodes[-1], nodes[1:-1]
    # input_1 (batch, 76, 32, 1) -> Reshape -> (batch, 1, 76, 32) ... conv2d_19 (batch, 96, 1, 1) -> Reshape
    if head.op_type != "Reshape" or tail.op_type != "Reshape":
        raise ValueError(f"{path}: not openWakeWord 0.5.1's embedding model (expected Reshape ... Reshape)")
    used: set[str] = {i for n in body for i in n.input}
    inits = [i for i in g.initializer if i.name in used]

    def ints(name: str, values: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    out_nodes, contexts = [], []
    offset = 0
    rename = {head.output[0]: "mel"}
    for n in body:
        inputs = [rename.get(i, i) for i in n.input]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and attrs["kernel_shape"][0] > 1:
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if pads[0] or pads[2]:
                raise ValueError(f"{path}: convolution {n.name} is padded in time; cannot stream it")
            keep = attrs["kernel_shape"][0] - 1  # rows of the previous step this convolution needs
            _, channels, _, freq = shapes[n.input[0]]
            size = channels * keep * freq
            p = f"context{len(contexts)}"
            out_nodes += [
                helper.make_node("Slice", ["context", ints(p + "_from", [offset]), ints(p + "_to", [offset + size]),
                                           ints(p + "_axis", [1])], [p + "_flat"]),
                helper.make_node("Reshape", [p + "_flat", ints(p + "_shape", [-1, channels, keep, freq])], [p]),
                # (batch, C, keep, F) ++ (batch, C, new, F) on the time axis -> (batch, C, keep + new, F)
                helper.make_node("Concat", [p, inputs[0]], [p + "_joined"], axis=2),
                helper.make_node("Slice", [p + "_joined", ints(p + "_last", [-keep]), ints(p + "_end", [2**62]),
                                           ints(p + "_time", [2])], [p + "_next"]),
                helper.make_node("Reshape", [p + "_next", ints(p + "_flatshape", [-1, size])], [p + "_out"]),
            ]
            inputs[0] = p + "_joined"
            contexts.append(p + "_out")
            offset += size
        node = helper.make_node(n.op_type, inputs, list(n.output), name=n.name)
        node.attribute.extend(n.attribute)
        out_nodes.append(node)
    out_nodes.append(helper.make_node("Concat", contexts, ["context_out"], axis=1))
    out_nodes.append(helper.make_node("Reshape", [tail.input[0], ints("embedding_shape", [-1, EMBEDDING_DIM])],
                                      ["embedding"]))
    graph = helper.make_graph(
        out_nodes, "embedding_streaming",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", 1, "frames", MEL_BINS]),
         helper.make_tensor_value_info("context", TensorProto.FLOAT, ["batch", offset])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM]),
         helper.make_tensor_value_info("context_out", TensorProto.FLOAT, ["batch", offset])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=src.opset_import)
    model.ir_version = src.ir_version
    onnx.checker.check_model(model)
    return model, offset


def batched_head(path: str):
    """A wake word's head with a free batch dimension (hey_jarvis's If made a Where); an onnx.ModelProto."""
    import onnx
    from onnx import helper

    model = onnx.load(path)
    g = model.graph
    for vi in list(g.input) + list(g.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    last = g.node[-1]
    if last.op_type == "If":
        cast = g.node[-2]
        branches = {a.name: a.g for a in last.attribute}
        then, other = branches["then_branch"], branches["else_branch"]
        if cast.op_type != "Cast" or len(other.node) != 1 or other.node[0].op_type != "Identity":
            raise ValueError(f"{path}: unexpected If in a wake-word head")
        condition, plain = cast.input[0], other.node[0].input[0]  # bool (batch, 1), score (batch, 1)
        keep = list(g.node)[:-2]
        del g.node[:]
        g.node.extend(keep + list(then.node))
        g.node.append(helper.make_node("Where", [condition, then.output[0].name, plain], [last.output[0]]))
    onnx.checker.check_model(model)
    return model
