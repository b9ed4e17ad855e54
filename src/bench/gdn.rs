//! Linear-attention benchmark cases (issue #4) on Qwen3-Next shapes (PERF.md):
//! `causal_conv1d_fn`, `causal_conv1d_update`,
//! `fused_recurrent_gated_delta_rule` (shown as `fused_recurrent_gdr`, the
//! table's op column is 24 wide) and `chunk_gated_delta_rule`, bf16
//! activations, fp32 GDN state.
//!
//! * Conv: dim 8192, width 4, silu, no bias, the conv-state pool in vLLM's
//!   dim-contiguous layout `(lines, dim, 3)` with strides `(3·dim, 1, dim)`.
//!   Prefill: one sequence of T ∈ {128, 2048, 8192} tokens with an initial
//!   state, x `(dim, T)` channel-contiguous, out given. Decode: B ∈ {1, 64,
//!   256} sequences of one token, out given.
//! * GDN: 16 key / 32 value heads × 128, q/k L2-normalised in the kernel,
//!   g fp32 (−0.1..0), beta bf16 (0.1..0.9). Decode: B ∈ {1, 64, 256}
//!   sequences of one token, state `[slots, 32, 128, 128]` fp32 (2 MiB a
//!   slot). Prefill: one sequence of T ∈ {512, 4096} tokens through the
//!   chunked op (final state written back) and through the recurrent op
//!   (state updated in place) as two cases with the same shape, so the
//!   chunked-vs-recurrent ratio (issue #4: ≥ 4× at T = 4096) is the ratio
//!   of their times.
//! * Cold: conv prefill rotates x and out over copies filling
//!   [`Config::cold_bytes`] (≥ 256 MiB and 2x the last-level cache; at
//!   T = 8192 one call's x + out is 256 MiB); the decode cases walk a state
//!   pool of `max(cold_bytes, one call's states)`, each call taking the next
//!   B slots (wrapping), so every call's state comes from DRAM. The decode
//!   inputs (x, q/k/v, g, beta) and the prefill GDN inputs are one buffer
//!   per case reused by every call (as the output of the projection an
//!   engine has just computed; at T = 4096 they are 66 MB anyway).
//! * Bytes counted: conv, x + weight + state line read, out + state line
//!   written; GDN decode, state read + written, q/k/v/g/beta read, o
//!   written; GDN prefill, q/k/v/g/beta read and o written (the 4 MiB state
//!   is ignored). Roofline: the measured copy bandwidth. Flops: conv 2·width
//!   per output; recurrent GDN 8·K·V per token and value head; chunked GDN
//!   (chunk C = 64) 2·(3·C·K·V + C²·V + C²·K·H/HV) per chunk and value head
//!   (below). The prefill cases are flop-bound: GFLOP/s against the
//!   measured FMA peak.
//! * Chunked vs recurrent, per token and value head (K = V = 128, C = 64,
//!   HV/H = 2), counting a multiply-add as 2 flops:
//!   - recurrent: S·k and S·q (2·K·V multiply-adds) and the rank-one update
//!     exp(g)·S + d·kᵀ (2·K·V): 8·K·V = 131,072 flops.
//!   - chunked, fla's form (W = T·(β·e^G·k), U = T·(β·v), then U − W·S):
//!     k·kᵀ and q·kᵀ triangles C²·K, T·[βe^G k | βv] C²·(K+V)/2, P·D C²·V/2,
//!     q·S, W·S, kᵀ·D 3·C·K·V multiply-adds per chunk: 139,264 flops a
//!     token, 1.0625× the recurrence.
//!   - chunked, this kernel: D = T·(β·(v − e^G·k·S)) needs no W or U (the
//!     C²·K/2 of T·βe^G k goes), and k·kᵀ, q·kᵀ are computed once for the
//!     HV/H value heads that share a key head: 3·C·K·V + C²·V + C²·K·H/HV
//!     multiply-adds per chunk, 2·(3·K·V + C·V + C·K·H/HV) = 122,880 flops a
//!     token, 0.9375× the recurrence.
//!
//!   So a chunked run 4× faster than the recurrent one must sustain
//!   4 × 0.9375 = 3.75× the recurrent kernel's flop rate. With fp32 products
//!   (the avx512 tier) that is out of reach: with the recurrent case at
//!   364.6 ms (session 4; 47.1 GFLOP/s) it meant 177 GFLOP/s, 74% of a
//!   240 GFLOP/s FMA peak, for the whole op (conversions, l2norm, decay
//!   exponentials, the solve's dependent steps, the q/k/v/o traffic), and
//!   the fp32 register tiles reach about 72% of peak with their epilogues.
//!   Since the recurrent kernel holds a state row in registers (session 5)
//!   it runs T = 4096 in 222.5–265.7 ms (64.7–77.2 GFLOP/s; `xpu-ops bench
//!   --threads 1 T=4096`, nine runs at load 0.9–1.1), so 4× now needs the
//!   chunked op in 56–66 ms.
//!
//!   On the amx tier with bf16 q/k the chunked kernel runs `[k; q]·[k; q]ᵀ`,
//!   `[k; q]·S`, `kᵀ·D` and `P·D` on the AMX tiles (xpu_src/cpu/amx/gdn_chunk.c;
//!   the fp32 operands as bf16 hi + lo pairs, so `[k; q]·S` and `kᵀ·D` cost
//!   twice their count in tile flops and `P·D` three times). The flop count
//!   above is unchanged, so its GFLOP/s there can exceed the fp32 FMA peak:
//!   a roof above 100% on that tier means the tile unit, not a different
//!   accounting. Per chunk and value head that is 512 + 256 + 64 (the Gram,
//!   half per value head) + 144 (P·D, its triangle in 32-row blocks) = 976
//!   TDPBF16PS of 16,384 flops, 32.7 GFLOP at T = 4096 (2048 chunk-heads;
//!   since session 8: the Gram 48, skipping its blocks above the diagonal,
//!   and + 48 for the solve's off-diagonal block, 1008):
//!   8.6 ms at the probed 3782 GFLOP/s, 15 ms at the 7.4 ns per instruction
//!   measured for the `[k; q]·S` block loop with its tile loads and stores
//!   (random operands, in L2). The fp32 vector work left is the triangular
//!   solve, 16.1k zmm FMAs per chunk-head (1.06 GFLOP, 4.3 ms at 244
//!   GFLOP/s; ~8k since session 8 moved its off-diagonal block to the
//!   tiles, which made the op only ~2% faster), plus the hi/lo splits (S, exp(G_last − G)·D and P, D for
//!   P·D), the decay exponentials and the bf16 conversions;
//!   q/k/v/o are 75 MB (3.4 ms at the copy bandwidth, prefetched under the
//!   products). The kernel measures 51.6–61.0 ms in the bench (4.1–4.4× the
//!   recurrent case in the same runs, which swing as much with the load;
//!   55.9 vs 240.4 ms = 4.3× without a variant of P·D that reused the state
//!   update's split of D, dropped: 1–2% faster, less accurate;
//!   45–49 ms best of 16 in a standalone harness with 64-byte aligned
//!   buffers, 52–55 ms with the bench's malloc'd ones, 16 bytes off a cache
//!   line), so about half its time is neither tile products nor FMAs
//!   at peak: tile-load latency between dependent steps, the splits, and
//!   the vector work that does not overlap the tile unit (the out-of-order
//!   window holds only a few hundred instructions past a block's tile ops).
//! * Floors (issue #4): conv ≥ 80% of the bandwidth roofline, GDN decode
//!   ≥ 75%; the prefill speedup is not a per-case floor.

use half::bf16;

use super::{AlignedBuf, Bound, Case, CaseInfo, Config, Floor, Peak, Rng, Runner, Work, LINE};
use crate::tensor::{TensorView, TensorViewMut};

/// Conv channels (Qwen3-Next: 2·16·128 + 32·128).
pub const DIM: usize = 8192;
/// Conv kernel width.
pub const WIDTH: usize = 4;
/// GDN key heads.
pub const H: usize = 16;
/// GDN value heads.
pub const HV: usize = 32;
/// GDN key head size.
pub const KD: usize = 128;
/// GDN value head size.
pub const VD: usize = 128;
/// Chunk length of the chunked algorithm (for the flop count).
pub const CHUNK: usize = 64;

/// Conv prefill token counts.
pub const CONV_TOKENS: [usize; 3] = [128, 2048, 8192];
/// Decode batch sizes (conv and GDN).
pub const DECODE_BATCHES: [usize; 3] = [1, 64, 256];
/// GDN prefill token counts.
pub const PREFILL_TOKENS: [usize; 2] = [512, 4096];

/// Bytes of one conv-state line (bf16, width − 1 columns).
const CONV_LINE: usize = DIM * (WIDTH - 1) * 2;
/// Bytes of one GDN state slot (fp32).
const GDN_SLOT: usize = HV * VD * KD * 4;

/// One case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `causal_conv1d_fn` over one sequence of `tokens`.
    ConvFn { tokens: usize },
    /// `causal_conv1d_update` for `batch` sequences of one token.
    ConvUpdate { batch: usize },
    /// `fused_recurrent_gated_delta_rule` for `batch` sequences of one token.
    GdnDecode { batch: usize },
    /// `chunk_gated_delta_rule` over one sequence of `tokens`.
    ChunkPrefill { tokens: usize },
    /// `fused_recurrent_gated_delta_rule` over one sequence of `tokens`.
    RecurrentPrefill { tokens: usize },
}

/// bf16 bytes of q, k, v, g (fp32) and beta for `t` tokens, and of o.
fn gdn_io_bytes(t: usize) -> (usize, usize) {
    (
        t * ((2 * H * KD + HV * VD) * 2 + HV * 4 + HV * 2),
        t * HV * VD * 2,
    )
}

impl Shape {
    /// The work of one call.
    pub fn work(&self) -> Work {
        let (bytes, flops) = match *self {
            Shape::ConvFn { tokens: t } => {
                let read = DIM * t * 2 + DIM * WIDTH * 2 + CONV_LINE;
                let written = DIM * t * 2 + CONV_LINE;
                ((read + written) as f64, (2 * WIDTH * DIM * t) as f64)
            }
            Shape::ConvUpdate { batch: b } => {
                let read = b * (DIM * 2 + CONV_LINE) + DIM * WIDTH * 2;
                let written = b * (DIM * 2 + CONV_LINE);
                ((read + written) as f64, (2 * WIDTH * DIM * b) as f64)
            }
            Shape::GdnDecode { batch: b } => {
                let (input, out) = gdn_io_bytes(b);
                (
                    (2 * b * GDN_SLOT + input + out) as f64,
                    (b * HV * 8 * KD * VD) as f64,
                )
            }
            Shape::ChunkPrefill { tokens: t } => {
                let (input, out) = gdn_io_bytes(t);
                let (c, k, v) = (CHUNK as f64, KD as f64, VD as f64);
                let share = H as f64 / HV as f64;
                let per_chunk = 2.0 * (3.0 * c * k * v + c * c * v + c * c * k * share);
                (
                    (input + out) as f64,
                    per_chunk * t.div_ceil(CHUNK) as f64 * HV as f64,
                )
            }
            Shape::RecurrentPrefill { tokens: t } => {
                let (input, out) = gdn_io_bytes(t);
                ((input + out) as f64, (t * HV * 8 * KD * VD) as f64)
            }
        };
        Work {
            bytes,
            flops,
            bound: Bound::Copy,
            peak: Peak::Fp32,
        }
    }

    /// Slots of the cold state pool a decode case walks.
    fn pool_slots(&self, cold: usize) -> usize {
        match *self {
            Shape::ConvUpdate { batch } => (cold / CONV_LINE).max(batch),
            Shape::GdnDecode { batch } => (cold / GDN_SLOT).max(batch),
            _ => 1,
        }
    }

    pub fn info(&self, cfg: &Config) -> CaseInfo {
        let gdn = format!("H={H} HV={HV} K=V={KD}");
        let (op, shape, floor) = match *self {
            Shape::ConvFn { tokens } => (
                "causal_conv1d_fn",
                format!("T={tokens} dim={DIM} w={WIDTH} silu"),
                Some(Floor::MinFraction(0.8)),
            ),
            Shape::ConvUpdate { batch } => (
                "causal_conv1d_update",
                format!("B={batch} dim={DIM} w={WIDTH} silu"),
                Some(Floor::MinFraction(0.8)),
            ),
            Shape::GdnDecode { batch } => (
                "fused_recurrent_gdr",
                format!(
                    "B={batch} {gdn} pool={}MiB",
                    (self.pool_slots(cfg.cold_bytes()) * GDN_SLOT) >> 20
                ),
                Some(Floor::MinFraction(0.75)),
            ),
            Shape::ChunkPrefill { tokens } => (
                "chunk_gated_delta_rule",
                format!("T={tokens} {gdn} prefill"),
                None,
            ),
            Shape::RecurrentPrefill { tokens } => (
                "fused_recurrent_gdr",
                format!("T={tokens} {gdn} prefill"),
                None,
            ),
        };
        CaseInfo {
            family: "gdn",
            op,
            shape,
            dtype: match self {
                Shape::ConvFn { .. } | Shape::ConvUpdate { .. } => "bf16",
                _ => "bf16 st=f32",
            }
            .into(),
            work: self.work(),
            floor,
        }
    }
}

/// Every linear-attention shape, in report order.
pub fn shapes() -> Vec<Shape> {
    let mut v: Vec<Shape> = CONV_TOKENS
        .iter()
        .map(|&tokens| Shape::ConvFn { tokens })
        .collect();
    v.extend(
        DECODE_BATCHES
            .iter()
            .map(|&batch| Shape::ConvUpdate { batch }),
    );
    v.extend(
        DECODE_BATCHES
            .iter()
            .map(|&batch| Shape::GdnDecode { batch }),
    );
    for tokens in PREFILL_TOKENS {
        v.push(Shape::ChunkPrefill { tokens });
        v.push(Shape::RecurrentPrefill { tokens });
    }
    v
}

fn rand_bf16(rng: &mut Rng, n: usize, scale: f32) -> AlignedBuf<bf16> {
    AlignedBuf::from_vec(
        (0..n)
            .map(|_| bf16::from_f32(scale * rng.uniform()))
            .collect(),
        LINE,
    )
}

/// Conv-state pool views `(lines, dim, width − 1)`, dim contiguous (vLLM).
fn conv_states(states: &mut [bf16], lines: usize) -> TensorViewMut<'_> {
    TensorViewMut::strided(
        states,
        &[lines, DIM, WIDTH - 1],
        &[DIM * (WIDTH - 1), 1, DIM],
    )
    .unwrap()
}

/// GDN inputs for `t` tokens: q, k, v, beta (bf16) and g (fp32).
struct GdnInputs {
    q: AlignedBuf<bf16>,
    k: AlignedBuf<bf16>,
    v: AlignedBuf<bf16>,
    g: AlignedBuf<f32>,
    beta: AlignedBuf<bf16>,
}

impl GdnInputs {
    fn new(rng: &mut Rng, t: usize) -> GdnInputs {
        GdnInputs {
            q: rand_bf16(rng, t * H * KD, 1.0),
            k: rand_bf16(rng, t * H * KD, 1.0),
            v: rand_bf16(rng, t * HV * VD, 1.0),
            g: AlignedBuf::from_vec(
                (0..t * HV).map(|_| -0.05 - 0.05 * rng.uniform()).collect(),
                LINE,
            ),
            beta: AlignedBuf::from_vec(
                (0..t * HV)
                    .map(|_| bf16::from_f32(0.5 + 0.4 * rng.uniform()))
                    .collect(),
                LINE,
            ),
        }
    }

    /// Views as `batch` sequences of `t` tokens: q, k, v, g, beta.
    fn views(&self, batch: usize, t: usize) -> [TensorView<'_>; 5] {
        [
            TensorView::new(&self.q, &[batch, t, H, KD]).unwrap(),
            TensorView::new(&self.k, &[batch, t, H, KD]).unwrap(),
            TensorView::new(&self.v, &[batch, t, HV, VD]).unwrap(),
            TensorView::new(&self.g, &[batch, t, HV]).unwrap(),
            TensorView::new(&self.beta, &[batch, t, HV]).unwrap(),
        ]
    }
}

/// The next `idx.len()` slots of a pool of `slots`, from `*next` (wrapping).
fn next_window(idx: &mut [i32], next: &mut usize, slots: usize) {
    for (i, x) in idx.iter_mut().enumerate() {
        *x = ((*next + i) % slots) as i32;
    }
    *next = (*next + idx.len()) % slots;
}

fn runner(s: Shape, cold: usize, seed: u64) -> Runner {
    let mut rng = Rng(seed);
    let expect = "benchmark arguments are valid";
    match s {
        Shape::ConvFn { tokens: t } => {
            // Copies of x and out filling the cold size, one per call.
            let copies = (cold / (2 * DIM * t * 2)).max(1);
            // The op reads x only (out is given), so the copies stay as filled.
            let mut xs = rand_bf16(&mut rng, copies * DIM * t, 1.0);
            let mut outs = AlignedBuf::new(copies * DIM * t, LINE, bf16::ONE);
            let mut states = rand_bf16(&mut rng, copies * DIM * (WIDTH - 1), 1.0);
            let w = rand_bf16(&mut rng, DIM * WIDTH, 0.5);
            let qsl = [0i32, t as i32];
            let hi = [1i32];
            let mut i = 0usize;
            Box::new(move || {
                let k = i;
                i = (i + 1) % copies;
                let n = DIM * t;
                let idx = [k as i32];
                crate::causal_conv1d_fn(
                    &mut TensorViewMut::strided(&mut xs[k * n..(k + 1) * n], &[DIM, t], &[1, DIM])
                        .unwrap(),
                    &TensorView::new(&w, &[DIM, WIDTH]).unwrap(),
                    None,
                    &mut conv_states(&mut states, copies),
                    &TensorView::new(&qsl, &[2]).unwrap(),
                    Some(&TensorView::new(&idx, &[1]).unwrap()),
                    Some(&TensorView::new(&hi, &[1]).unwrap()),
                    Some("silu"),
                    -1,
                    Some(
                        &mut TensorViewMut::strided(
                            &mut outs[k * n..(k + 1) * n],
                            &[DIM, t],
                            &[1, DIM],
                        )
                        .unwrap(),
                    ),
                )
                .expect(expect);
            })
        }
        Shape::ConvUpdate { batch: b } => {
            let lines = s.pool_slots(cold);
            let mut states = rand_bf16(&mut rng, lines * DIM * (WIDTH - 1), 1.0);
            let w = rand_bf16(&mut rng, DIM * WIDTH, 0.5);
            let mut x = rand_bf16(&mut rng, b * DIM, 1.0);
            let mut out = AlignedBuf::new(b * DIM, LINE, bf16::ZERO);
            let mut idx = vec![0i32; b];
            let mut next = 0usize;
            Box::new(move || {
                next_window(&mut idx, &mut next, lines);
                crate::causal_conv1d_update(
                    &mut TensorViewMut::new(&mut x, &[b, DIM]).unwrap(),
                    &mut conv_states(&mut states, lines),
                    &TensorView::new(&w, &[DIM, WIDTH]).unwrap(),
                    None,
                    Some("silu"),
                    Some(&TensorView::new(&idx, &[b]).unwrap()),
                    None,
                    None,
                    -1,
                    -1,
                    Some(&mut TensorViewMut::new(&mut out, &[b, DIM]).unwrap()),
                )
                .expect(expect);
            })
        }
        Shape::GdnDecode { batch: b } => {
            let slots = s.pool_slots(cold);
            // Non-zero fill: every page written before timing.
            let mut pool = AlignedBuf::new(slots * HV * VD * KD, LINE, 0.01f32);
            let inp = GdnInputs::new(&mut rng, b);
            let mut o = AlignedBuf::new(b * HV * VD, LINE, bf16::ZERO);
            let mut idx = vec![0i32; b];
            let mut next = 0usize;
            Box::new(move || {
                next_window(&mut idx, &mut next, slots);
                let [q, k, v, g, beta] = inp.views(b, 1);
                crate::fused_recurrent_gated_delta_rule(
                    &q,
                    &k,
                    &v,
                    &g,
                    Some(&beta),
                    None,
                    &mut TensorViewMut::new(&mut pool, &[slots, HV, VD, KD]).unwrap(),
                    None,
                    Some(&TensorView::new(&idx, &[b]).unwrap()),
                    None,
                    true,
                    &mut TensorViewMut::new(&mut o, &[b, 1, HV, VD]).unwrap(),
                )
                .expect(expect);
            })
        }
        Shape::ChunkPrefill { tokens: t } | Shape::RecurrentPrefill { tokens: t } => {
            let chunked = matches!(s, Shape::ChunkPrefill { .. });
            let inp = GdnInputs::new(&mut rng, t);
            let mut state = AlignedBuf::new(HV * VD * KD, LINE, 0.01f32);
            let mut o = AlignedBuf::new(t * HV * VD, LINE, bf16::ZERO);
            Box::new(move || {
                let [q, k, v, g, beta] = inp.views(1, t);
                let mut st = TensorViewMut::new(&mut state, &[1, HV, VD, KD]).unwrap();
                let mut ov = TensorViewMut::new(&mut o, &[1, t, HV, VD]).unwrap();
                let r = if chunked {
                    crate::chunk_gated_delta_rule(
                        &q,
                        &k,
                        &v,
                        &g,
                        Some(&beta),
                        None,
                        Some(&mut st),
                        true,
                        None,
                        None,
                        None,
                        true,
                        &mut ov,
                    )
                } else {
                    crate::fused_recurrent_gated_delta_rule(
                        &q,
                        &k,
                        &v,
                        &g,
                        Some(&beta),
                        None,
                        &mut st,
                        None,
                        None,
                        None,
                        true,
                        &mut ov,
                    )
                };
                r.expect(expect);
            })
        }
    }
}

/// Every linear-attention case.
pub fn cases(cfg: &Config) -> Vec<Case> {
    let cold = cfg.cold_bytes();
    shapes()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let seed = cfg.seed ^ (0x4744_4e00 + i as u64);
            Case::new(s.info(cfg), move || runner(s, cold, seed))
        })
        .collect()
}
