import { flashAttention } from "../mod.ts";
import { referenceAttention } from "../src/reference.ts";
const t = (x: number[]) => ({ data: new Float32Array(x), shape: [1, x.length, 1, 1] });
for (const [qv, kv] of [[NaN, 1], [Infinity, 1], [1e38, 1e38], [1, Infinity]]) {
  const a = flashAttention(t([qv]), t([kv]), t([2]), { returnLse: true, scale: 0 });
  const r = referenceAttention(t([qv]), t([kv]), t([2]), { returnLse: true, scale: 0 });
  const b = flashAttention(t([qv]), t([kv]), t([2]), { returnLse: true });
  const s = referenceAttention(t([qv]), t([kv]), t([2]), { returnLse: true });
  console.log(
    qv,
    kv,
    "scale0 lib",
    a.data[0],
    a.lse.data[0],
    "ref",
    r.data[0],
    r.lse.data[0],
    "| scale1 lib",
    b.data[0],
    b.lse.data[0],
    "ref",
    s.data[0],
    s.lse.data[0],
  );
}
