/**
 * Just enough of ONNX's protobuf encoding to build a one-node model in code, so the field benchmark
 * needs no model file and no protobuf library: ModelProto, GraphProto, NodeProto, AttributeProto,
 * ValueInfoProto, TypeProto.Tensor, TensorShapeProto and OperatorSetIdProto, with the field numbers
 * of onnx/onnx.proto.
 *
 * Protobuf's wire format, as used here: every field is a key, `(fieldNumber << 3) | wireType`, as
 * a varint, then its payload. Wire type 0 is a varint (int32, int64, enums), 2 is length-delimited
 * (strings, bytes, embedded messages: a varint byte length, then the bytes), 5 is a fixed 32-bit
 * little-endian value (float). Repeated fields are the same field written once per element.
 */

/** Protobuf wire types. */
const VARINT = 0;
const LENGTH_DELIMITED = 2;
const FIXED32 = 5;

/** onnx.proto's TensorProto.DataType.FLOAT. */
const ELEM_FLOAT = 1;

/** onnx.proto's AttributeProto.AttributeType values for the kinds this encoder writes. */
const ATTRIBUTE_FLOAT = 1;
const ATTRIBUTE_INT = 2;
const ATTRIBUTE_STRING = 3;

/** An unsigned integer as a base-128 varint, least significant group first. */
function varint(value: number): number[] {
  // Numbers stay exact up to 2^53, and ONNX fields here (versions, dims, counts) are small and
  // non-negative; a negative int64 would need ten bytes of two's complement, which nothing here writes.
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Cannot encode ${value} as a varint: expected a non-negative safe integer`);
  }
  const out: number[] = [];
  while (value >= 0x80) {
    out.push((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  out.push(value);
  return out;
}

function key(field: number, wireType: number): number[] {
  return varint(field * 8 + wireType);
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function intField(field: number, value: number): Uint8Array {
  return Uint8Array.from([...key(field, VARINT), ...varint(value)]);
}

function bytesField(field: number, payload: Uint8Array): Uint8Array {
  return concat([Uint8Array.from([...key(field, LENGTH_DELIMITED), ...varint(payload.length)]), payload]);
}

function stringField(field: number, value: string): Uint8Array {
  return bytesField(field, new TextEncoder().encode(value));
}

function floatField(field: number, value: number): Uint8Array {
  const payload = new Uint8Array(4);
  new DataView(payload.buffer).setFloat32(0, value, true);
  return concat([Uint8Array.from(key(field, FIXED32)), payload]);
}

function messageField(field: number, parts: readonly Uint8Array[]): Uint8Array {
  return bytesField(field, concat(parts));
}

/** A graph input or output: an f32 tensor whose dims are sizes or symbolic names. */
export interface TensorInfo {
  /** The value's name in the graph. */
  name: string;
  /** Each dimension: a fixed size, or a name such as "seq" for a size chosen at run time. */
  shape: readonly (number | string)[];
}

/** A node attribute of one of the scalar kinds. */
export type Attribute =
  | { name: string; int: number }
  | { name: string; float: number }
  | { name: string; string: string };

/** One operator call. */
export interface OnnxNode {
  /** The operator, e.g. "MultiHeadAttention". */
  opType: string;
  /** Its domain: "" for the standard operators, "com.microsoft" for onnxruntime's contrib ops. */
  domain: string;
  /** Input value names, in the operator's order; "" skips an optional input. */
  inputs: readonly string[];
  /** Output value names. */
  outputs: readonly string[];
  /** The node's attributes. */
  attributes: readonly Attribute[];
}

/** A model of one graph. */
export interface OnnxModel {
  /** ModelProto.ir_version. */
  irVersion: number;
  /** The operator set versions the graph uses, per domain. */
  opsetImports: readonly { domain: string; version: number }[];
  /** ModelProto.producer_name. */
  producerName: string;
  /** GraphProto.name. */
  graphName: string;
  /** The graph's nodes, in topological order. */
  nodes: readonly OnnxNode[];
  /** Graph inputs (all f32 tensors). */
  inputs: readonly TensorInfo[];
  /** Graph outputs (all f32 tensors). */
  outputs: readonly TensorInfo[];
}

// ValueInfoProto { name = 1; type = 2 }, TypeProto { tensor_type = 1 },
// TypeProto.Tensor { elem_type = 1; shape = 2 }, TensorShapeProto { dim = 1 },
// TensorShapeProto.Dimension { dim_value = 1; dim_param = 2 }.
function valueInfo(field: number, info: TensorInfo): Uint8Array {
  const dims = info.shape.map((dim) =>
    messageField(1, [typeof dim === "number" ? intField(1, dim) : stringField(2, dim)])
  );
  const tensorType = messageField(1, [intField(1, ELEM_FLOAT), messageField(2, dims)]);
  return messageField(field, [stringField(1, info.name), messageField(2, [tensorType])]);
}

// AttributeProto { name = 1; f = 2; i = 3; s = 4; type = 20 }.
function attribute(attr: Attribute): Uint8Array {
  if ("int" in attr) {
    return messageField(5, [stringField(1, attr.name), intField(3, attr.int), intField(20, ATTRIBUTE_INT)]);
  }
  if ("float" in attr) {
    return messageField(5, [stringField(1, attr.name), floatField(2, attr.float), intField(20, ATTRIBUTE_FLOAT)]);
  }
  return messageField(5, [stringField(1, attr.name), stringField(4, attr.string), intField(20, ATTRIBUTE_STRING)]);
}

// NodeProto { input = 1; output = 2; name = 3; op_type = 4; attribute = 5; domain = 7 }.
function node(n: OnnxNode, index: number): Uint8Array {
  return messageField(1, [
    ...n.inputs.map((name) => stringField(1, name)),
    ...n.outputs.map((name) => stringField(2, name)),
    stringField(3, `${n.opType}_${index}`),
    stringField(4, n.opType),
    ...n.attributes.map(attribute),
    stringField(7, n.domain),
  ]);
}

/**
 * Serialises a model as ONNX's ModelProto bytes, ready for `InferenceSession.create(bytes)`.
 *
 * @param model The graph and its metadata.
 * @returns The protobuf encoding.
 */
export function encodeModel(model: OnnxModel): Uint8Array {
  // GraphProto { node = 1; name = 2; input = 11; output = 12 }.
  const graph = [
    ...model.nodes.map(node),
    stringField(2, model.graphName),
    ...model.inputs.map((info) => valueInfo(11, info)),
    ...model.outputs.map((info) => valueInfo(12, info)),
  ];
  // ModelProto { ir_version = 1; producer_name = 2; graph = 7; opset_import = 8 },
  // OperatorSetIdProto { domain = 1; version = 2 }.
  return concat([
    intField(1, model.irVersion),
    stringField(2, model.producerName),
    messageField(7, graph),
    ...model.opsetImports.map((o) => messageField(8, [stringField(1, o.domain), intField(2, o.version)])),
  ]);
}

/**
 * A model of one com.microsoft MultiHeadAttention node: query, key and value are [B, N, H·d]
 * (symbolic B and N, so one session serves every sequence length), the output is [B, N, H·d].
 * No bias, mask or past state, so onnxruntime is free to take its fused path.
 *
 * @param numHeads H.
 * @param headDim d.
 * @param unidirectional Causal (query i sees keys 0..i): MultiHeadAttention's `unidirectional` attribute.
 * @returns The model bytes.
 */
export function multiHeadAttentionModel(numHeads: number, headDim: number, unidirectional: boolean): Uint8Array {
  const hidden = numHeads * headDim;
  const io = (name: string): TensorInfo => ({ name, shape: ["batch", "seq", hidden] });
  const attributes: Attribute[] = [{ name: "num_heads", int: numHeads }];
  if (unidirectional) attributes.push({ name: "unidirectional", int: 1 });
  return encodeModel({
    // IR version 8 is the one that goes with opset 17, which onnxruntime 1.30 reads.
    irVersion: 8,
    opsetImports: [{ domain: "", version: 17 }, { domain: "com.microsoft", version: 1 }],
    producerName: "@flash/attention bench/field",
    graphName: "mha",
    nodes: [{
      opType: "MultiHeadAttention",
      domain: "com.microsoft",
      inputs: ["query", "key", "value"],
      outputs: ["output"],
      attributes,
    }],
    inputs: [io("query"), io("key"), io("value")],
    outputs: [io("output")],
  });
}
