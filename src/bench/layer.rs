//! Layer-op benchmark cases (issue #7): `rms_norm`, `fused_add_rms_norm`,
//! `rotary_embedding` and `silu_and_mul` on Qwen3-Next / Qwen3.5 shapes
//! (PERF.md), bf16.
//!
//! * Tokens T ∈ {1, 16, 256, 4096}; hidden 2048 (Qwen3-Next) and 4096
//!   (Qwen3.5) for the norms; the Qwen3-Next attention for RoPE (16 q heads,
//!   2 kv heads, head size 256, rotary dim 64 = partial factor 0.25, NeoX
//!   style, q and k strided views of one qkv row); SwiGLU intermediates 512
//!   (Qwen3-Next expert) and 6144 (dense).
//! * Cold, every case: one arena of [`Config::cold_bytes`] (≥ 256 MiB and 2x
//!   the last-level cache), shared by all cases, whose first half is cut into
//!   slots holding one call's inputs (with the weight, as in decode where
//!   each layer's weights and activations are touched once) and second half
//!   into slots for its outputs; successive calls take successive slots, so
//!   every call streams from DRAM. The input half is never written after
//!   it is filled (values in [-1, 1)), and the in-place ops (`fused_add_rms_norm`,
//!   `rotary_embedding`) work in the output half: when earlier cases' outputs
//!   (or a growing residual) fed `silu_and_mul`, it ran ~8x slower (values
//!   whose exp is subnormal, or subnormal products). Only the RoPE `cos_sin_cache` and
//!   positions are reused (one table for all layers).
//! * Bytes counted: the elements the op reads plus those it writes (for RoPE
//!   the rotary dims of every q/k head, read and written, and the cos/sin
//!   rows); the roofline is the measured copy bandwidth.
//! * No floors (issue #7 sets none).

use std::cell::RefCell;
use std::rc::Rc;

use half::bf16;

use super::{AlignedBuf, Bound, Case, CaseInfo, Config, Peak, Runner, Work};
use crate::dtype::DType;
use crate::tensor::{Layout, TensorView, TensorViewMut};

/// Token counts of every case (decode, small batch, prefill chunks).
pub const TOKENS: [usize; 4] = [1, 16, 256, 4096];
/// Hidden sizes of the norms: Qwen3-Next, Qwen3.5 large.
pub const HIDDEN: [usize; 2] = [2048, 4096];
/// SwiGLU intermediate sizes: a Qwen3-Next expert, a dense MLP.
pub const INTERMEDIATE: [usize; 2] = [512, 6144];

/// Qwen3-Next attention for RoPE.
const Q_HEADS: usize = 16;
const KV_HEADS: usize = 2;
const HEAD_SIZE: usize = 256;
const ROTARY_DIM: usize = 64;
const MAX_POS: usize = 4096;
const EPS: f64 = 1e-6;

/// Which op a case calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `rms_norm(out [T, H], input [T, H], weight [H])`.
    RmsNorm { hidden: usize },
    /// `fused_add_rms_norm(input [T, H], residual [T, H], weight [H])`.
    FusedAddRmsNorm { hidden: usize },
    /// `rotary_embedding` on the Qwen3-Next q/k heads.
    Rotary,
    /// `silu_and_mul(out [T, D], input [T, 2D])`.
    SiluAndMul { d: usize },
}

/// One layer-op case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub op: Op,
    pub tokens: usize,
}

impl Shape {
    /// bf16 elements of one call's slot in the arena's input half (tensors
    /// only read) and in its output half (tensors written, including those
    /// updated in place).
    fn slot_elems(&self) -> (usize, usize) {
        let t = self.tokens;
        match self.op {
            Op::RmsNorm { hidden } => (t * hidden + hidden, t * hidden),
            Op::FusedAddRmsNorm { hidden } => (hidden, 2 * t * hidden),
            Op::Rotary => (0, t * (Q_HEADS + 2 * KV_HEADS) * HEAD_SIZE),
            Op::SiluAndMul { d } => (2 * t * d, t * d),
        }
    }

    /// The work of one call.
    pub fn work(&self) -> Work {
        let t = self.tokens;
        let (bytes, flops) = match self.op {
            // Input read, output written, weight read.
            Op::RmsNorm { hidden } => ((2 * t * hidden + hidden) * 2, 4 * t * hidden),
            // Input and residual read and written, weight read.
            Op::FusedAddRmsNorm { hidden } => ((4 * t * hidden + hidden) * 2, 5 * t * hidden),
            // Rotary dims of every q/k head read and written, a cos/sin row
            // and a position per token.
            Op::Rotary => {
                let heads = Q_HEADS + KV_HEADS;
                (
                    2 * t * heads * ROTARY_DIM * 2 + t * ROTARY_DIM * 2 + t * 8,
                    3 * t * heads * ROTARY_DIM,
                )
            }
            // Gate and up read, out written; ~25 flops per silu (exp, divide).
            Op::SiluAndMul { d } => (3 * t * d * 2, 25 * t * d),
        };
        Work {
            bytes: bytes as f64,
            flops: flops as f64,
            bound: Bound::Copy,
            peak: Peak::Fp32,
        }
    }

    pub fn info(&self) -> CaseInfo {
        let t = self.tokens;
        let (op, shape) = match self.op {
            Op::RmsNorm { hidden } => ("rms_norm", format!("T={t} H={hidden}")),
            Op::FusedAddRmsNorm { hidden } => ("fused_add_rms_norm", format!("T={t} H={hidden}")),
            Op::Rotary => (
                "rotary_embedding",
                format!("T={t} q={Q_HEADS} kv={KV_HEADS} D={HEAD_SIZE} rot={ROTARY_DIM} neox"),
            ),
            Op::SiluAndMul { d } => ("silu_and_mul", format!("T={t} D={d}")),
        };
        CaseInfo {
            family: "layer",
            op,
            shape,
            dtype: "bf16".into(),
            work: self.work(),
            floor: None,
        }
    }
}

/// Every layer-op shape, in report order.
pub fn shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    for hidden in HIDDEN {
        for tokens in TOKENS {
            v.push(Shape {
                op: Op::RmsNorm { hidden },
                tokens,
            });
        }
    }
    for hidden in HIDDEN {
        for tokens in TOKENS {
            v.push(Shape {
                op: Op::FusedAddRmsNorm { hidden },
                tokens,
            });
        }
    }
    for tokens in TOKENS {
        v.push(Shape {
            op: Op::Rotary,
            tokens,
        });
    }
    for d in INTERMEDIATE {
        for tokens in TOKENS {
            v.push(Shape {
                op: Op::SiluAndMul { d },
                tokens,
            });
        }
    }
    v
}

/// The cold arena every case's slots live in, allocated and filled by the
/// first case that runs (and grown if a case's slot does not fit).
type Arena = Rc<RefCell<Option<AlignedBuf>>>;

fn arena_buf(arena: &Arena, bytes: usize) -> std::cell::RefMut<'_, AlignedBuf> {
    let mut a = arena.borrow_mut();
    if !matches!(&*a, Some(b) if b.len() >= bytes) {
        *a = None; // free the old one first
        let mut buf = AlignedBuf::new(bytes, 4096, 0);
        // Values in [-1, 1): finite data, so no op takes a special path.
        for (i, e) in buf.chunks_exact_mut(2).enumerate() {
            let x = bf16::from_f32(((i * 7919) % 2003) as f32 / 1001.0 - 1.0);
            e.copy_from_slice(&x.to_le_bytes());
        }
        *a = Some(buf);
    }
    std::cell::RefMut::map(a, |a| a.as_mut().expect("allocated above"))
}

/// The Qwen3-Next NeoX cos/sin table `[MAX_POS, ROTARY_DIM]` (theta 1e7).
fn cos_sin_cache() -> Vec<bf16> {
    let mut cache = vec![bf16::ZERO; MAX_POS * ROTARY_DIM];
    for p in 0..MAX_POS {
        for i in 0..ROTARY_DIM / 2 {
            let a = p as f64 * 10_000_000f64.powf(-2.0 * i as f64 / ROTARY_DIM as f64);
            cache[p * ROTARY_DIM + i] = bf16::from_f64(a.cos());
            cache[p * ROTARY_DIM + ROTARY_DIM / 2 + i] = bf16::from_f64(a.sin());
        }
    }
    cache
}

fn case(shape: Shape, cfg: &Config, arena: Arena) -> Case {
    let cold = cfg.cold_bytes();
    Case::new(shape.info(), move || runner(shape, arena, cold))
}

fn runner(s: Shape, arena: Arena, cold: usize) -> Runner {
    // The arena's first half holds tensors only read, its second half
    // tensors written, so the inputs of `rms_norm` and `silu_and_mul` stay
    // as filled whatever ran before (see the module doc); slots start on
    // cache lines.
    let (in_elems, out_elems) = s.slot_elems();
    let (in_bytes, out_bytes) = (
        (in_elems * 2).next_multiple_of(64),
        (out_elems * 2).next_multiple_of(64),
    );
    let half = (cold / 2).max(in_bytes).max(out_bytes);
    let arena_bytes = 2 * half;
    let slots = (half / in_bytes.max(1)).min(half / out_bytes.max(1));
    drop(arena_buf(&arena, arena_bytes)); // allocate before timing
    let mut next = 0usize;
    let t = s.tokens;
    let bf = DType::BF16;
    let (cache, positions) = if s.op == Op::Rotary {
        let pos: Vec<i64> = (0..t).map(|i| ((i * 131) % MAX_POS) as i64).collect();
        (cos_sin_cache(), pos)
    } else {
        (Vec::new(), Vec::new())
    };
    Box::new(move || {
        let mut a = arena_buf(&arena, arena_bytes);
        let (ins, outs) = a[..2 * half].split_at_mut(half);
        let slot = &mut ins[next * in_bytes..][..in_bytes];
        let out = &mut outs[next * out_bytes..][..out_bytes];
        next = (next + 1) % slots;
        let r = match s.op {
            Op::RmsNorm { hidden: h } => {
                let (x, w) = slot.split_at_mut(t * h * 2);
                crate::rms_norm(
                    &mut TensorViewMut::from_bytes(&mut out[..t * h * 2], bf, &[t, h], None)
                        .unwrap(),
                    &TensorView::from_bytes(x, bf, &[t, h], None).unwrap(),
                    &TensorView::from_bytes(&w[..h * 2], bf, &[h], None).unwrap(),
                    EPS,
                )
            }
            Op::FusedAddRmsNorm { hidden: h } => {
                let (x, r) = out.split_at_mut(t * h * 2);
                crate::fused_add_rms_norm(
                    &mut TensorViewMut::from_bytes(x, bf, &[t, h], None).unwrap(),
                    &mut TensorViewMut::from_bytes(&mut r[..t * h * 2], bf, &[t, h], None).unwrap(),
                    &TensorView::from_bytes(&slot[..h * 2], bf, &[h], None).unwrap(),
                    EPS,
                )
            }
            Op::Rotary => {
                // q [T, 16*256] and k [T, 2*256] with the qkv row stride, as
                // vLLM's q/k views of one qkv tensor.
                let row = (Q_HEADS + 2 * KV_HEADS) * HEAD_SIZE;
                let p = out.as_mut_ptr();
                let view = |cols: usize| Layout {
                    strides: vec![row, 1],
                    ..Layout::contiguous(bf, &[t, cols])
                };
                // SAFETY: both views lie inside the output slot (the last row ends at
                // (t - 1) * row + (Q_HEADS + KV_HEADS) * HEAD_SIZE <= t * row
                // elements), share no element, and the slot is borrowed
                // mutably for the whole call.
                let (mut q, mut k) = unsafe {
                    (
                        TensorViewMut::from_raw(p, view(Q_HEADS * HEAD_SIZE)),
                        TensorViewMut::from_raw(
                            p.add(Q_HEADS * HEAD_SIZE * 2),
                            view(KV_HEADS * HEAD_SIZE),
                        ),
                    )
                };
                crate::rotary_embedding(
                    &TensorView::new(&positions, &[t]).unwrap(),
                    &mut q,
                    Some(&mut k),
                    HEAD_SIZE,
                    &TensorView::new(&cache, &[MAX_POS, ROTARY_DIM]).unwrap(),
                    true,
                )
            }
            Op::SiluAndMul { d } => crate::silu_and_mul(
                &mut TensorViewMut::from_bytes(&mut out[..t * d * 2], bf, &[t, d], None).unwrap(),
                &TensorView::from_bytes(&slot[..t * 2 * d * 2], bf, &[t, 2 * d], None).unwrap(),
            ),
        };
        r.expect("benchmark arguments are valid");
    })
}

/// Every layer-op case, sharing one cold arena.
pub fn cases(cfg: &Config) -> Vec<Case> {
    let arena: Arena = Rc::new(RefCell::new(None));
    shapes()
        .into_iter()
        .map(|s| case(s, cfg, arena.clone()))
        .collect()
}
