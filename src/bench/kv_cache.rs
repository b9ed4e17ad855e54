//! KV-cache benchmark cases (issue #2): `reshape_and_cache_flash`,
//! `reshape_and_cache` and `copy_blocks`.
//!
//! * Tokens T ∈ {1, 8, 512, 8192}, KV heads H ∈ {2, 8}, head size D ∈ {128, 256},
//!   block size 16, bf16 sources into bf16 (`auto`) or fp8 e4m3 (`fp8`,
//!   per-tensor scales) caches.
//! * Cold: the key and value caches fill one arena of [`Config::cold_bytes`]
//!   (≥ 256 MiB and 2x the last-level cache), shared by all cases, and
//!   successive calls write different slots of it (windows of one
//!   permutation of all slots), so the written lines are not in cache.
//! * Slots: `random` = distinct uniformly random slots (decode batches, and
//!   the worst case for the paged layout, whose value rows are scattered
//!   `block_size` elements apart); `prefill` (T ≥ 512) = prompts of 512
//!   tokens filling randomly allocated blocks in order, as an engine's
//!   prefill writes them.
//! * Sources: one bf16 key and one value buffer per case, reused by every
//!   call, so up to T = 512 they stay in cache, like the output of the QKV
//!   projection an engine has just computed; at T = 8192 (32-64 MiB) they
//!   come from memory. Fractions above 100% at small T are those cache hits.
//! * Bytes counted: key + value read plus cache bytes written.
//! * Floors: ≥ 80% of the measured copy bandwidth at T ≥ 512; ≤ 2 µs per
//!   call at T = 1.

use std::cell::RefCell;
use std::rc::Rc;

use half::bf16;

use super::{AlignedBuf, Bound, Case, CaseInfo, Config, Floor, Peak, Rng, Runner, Work};
use crate::dtype::DType;
use crate::tensor::{TensorView, TensorViewMut};

const BLOCK_SIZE: usize = 16;
/// Tokens per prompt in the `prefill` slot pattern.
const PROMPT_LEN: usize = 512;

/// Which op a case calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `reshape_and_cache_flash`, caches `[num_blocks, block_size, H, D]`.
    Flash,
    /// `reshape_and_cache`, key `[nb, H, D/x, bs, x]`, value `[nb, H, D, bs]`.
    Paged,
}

/// How slots are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    Random,
    Prefill,
}

/// The cache's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheDtype {
    /// `kv_cache_dtype = "auto"` with bf16 sources.
    Bf16,
    /// `kv_cache_dtype = "fp8"` (e4m3), stored in a uint8 tensor.
    Fp8,
}

impl CacheDtype {
    fn size(self) -> usize {
        match self {
            CacheDtype::Bf16 => 2,
            CacheDtype::Fp8 => 1,
        }
    }
    fn dtype(self) -> DType {
        match self {
            CacheDtype::Bf16 => DType::BF16,
            CacheDtype::Fp8 => DType::U8,
        }
    }
    fn kv_cache_dtype(self) -> &'static str {
        match self {
            CacheDtype::Bf16 => "auto",
            CacheDtype::Fp8 => "fp8",
        }
    }
    fn label(self) -> &'static str {
        match self {
            CacheDtype::Bf16 => "bf16",
            CacheDtype::Fp8 => "bf16->fp8e4m3",
        }
    }
}

/// One cache-write case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteShape {
    pub op: Op,
    pub tokens: usize,
    pub heads: usize,
    pub head_size: usize,
    pub cache: CacheDtype,
    pub slots: Slots,
}

impl WriteShape {
    /// Bytes one call moves: bf16 key + value read, cache bytes written.
    pub fn bytes(&self) -> f64 {
        let elems = (self.tokens * self.heads * self.head_size) as f64;
        2.0 * elems * (2.0 + self.cache.size() as f64)
    }
}

/// The shapes of issue #2.
pub fn write_shapes() -> Vec<WriteShape> {
    let mut v = Vec::new();
    for op in [Op::Flash, Op::Paged] {
        for tokens in [1, 8, 512, 8192] {
            for heads in [2, 8] {
                for head_size in [128, 256] {
                    for cache in [CacheDtype::Bf16, CacheDtype::Fp8] {
                        for slots in [Slots::Random, Slots::Prefill] {
                            if slots == Slots::Prefill && tokens < PROMPT_LEN {
                                continue;
                            }
                            v.push(WriteShape {
                                op,
                                tokens,
                                heads,
                                head_size,
                                cache,
                                slots,
                            });
                        }
                    }
                }
            }
        }
    }
    v
}

/// The cold arena the caches of every case live in, allocated (and every
/// page written) by the first case that runs.
type Arena = Rc<RefCell<Option<AlignedBuf>>>;

fn arena_buf(arena: &Arena, bytes: usize) -> std::cell::RefMut<'_, AlignedBuf> {
    std::cell::RefMut::map(arena.borrow_mut(), |a| {
        a.get_or_insert_with(|| AlignedBuf::new(bytes, 4096, 0))
    })
}

/// Windows of one permutation of all slots, one window per call.
struct SlotWindows {
    slots: Vec<i64>,
    pos: usize,
    len: usize,
}

impl SlotWindows {
    fn new(shape: &WriteShape, num_blocks: usize, rng: &mut Rng) -> SlotWindows {
        let slots: Vec<i64> = match shape.slots {
            Slots::Random => {
                let mut s: Vec<i64> = (0..(num_blocks * BLOCK_SIZE) as i64).collect();
                rng.shuffle(&mut s);
                s
            }
            Slots::Prefill => {
                let mut blocks: Vec<i64> = (0..num_blocks as i64).collect();
                rng.shuffle(&mut blocks);
                blocks
                    .iter()
                    .flat_map(|&b| (0..BLOCK_SIZE as i64).map(move |o| b * BLOCK_SIZE as i64 + o))
                    .collect()
            }
        };
        assert!(slots.len() >= shape.tokens, "cache too small for one call");
        SlotWindows {
            slots,
            pos: 0,
            len: shape.tokens,
        }
    }

    fn next(&mut self) -> &[i64] {
        if self.pos + self.len > self.slots.len() {
            self.pos = 0;
        }
        let w = &self.slots[self.pos..self.pos + self.len];
        self.pos += self.len;
        w
    }
}

fn write_case(shape: WriteShape, cfg: &Config, arena: Arena) -> Case {
    let op = match shape.op {
        Op::Flash => "reshape_and_cache_flash",
        Op::Paged => "reshape_and_cache",
    };
    let floor = if shape.tokens == 1 {
        Some(Floor::MaxMicros(2.0))
    } else if shape.tokens >= 512 {
        Some(Floor::MinFraction(0.8))
    } else {
        None
    };
    let info = CaseInfo {
        family: "kv_cache",
        op,
        shape: format!(
            "T={} H={} D={} bs={BLOCK_SIZE} {}",
            shape.tokens,
            shape.heads,
            shape.head_size,
            match shape.slots {
                Slots::Random => "random",
                Slots::Prefill => "prefill",
            }
        ),
        dtype: shape.cache.label().into(),
        work: Work {
            bytes: shape.bytes(),
            flops: 0.0,
            bound: Bound::Copy,
            peak: Peak::Fp32,
        },
        floor,
    };
    let arena_bytes = cfg.cold_bytes();
    let seed = cfg.seed ^ (shape.tokens * 31 + shape.heads * 7 + shape.head_size) as u64;
    Case::new(info, move || write_runner(shape, arena, arena_bytes, seed))
}

fn write_runner(s: WriteShape, arena: Arena, arena_bytes: usize, seed: u64) -> Runner {
    let (t, h, d, es) = (s.tokens, s.heads, s.head_size, s.cache.size());
    let half = arena_bytes / 2;
    let block_bytes = BLOCK_SIZE * h * d * es;
    let num_blocks = half / block_bytes;
    let cache_bytes = num_blocks * block_bytes;
    drop(arena_buf(&arena, arena_bytes)); // allocate before timing
    let mut rng = Rng(seed);
    let mut windows = SlotWindows::new(&s, num_blocks, &mut rng);
    let key: Vec<bf16> = (0..t * h * d)
        .map(|_| bf16::from_f32(rng.uniform()))
        .collect();
    let value: Vec<bf16> = (0..t * h * d)
        .map(|_| bf16::from_f32(rng.uniform()))
        .collect();
    let scale = [0.01f32];
    let x = 16 / es;
    let (kshape, vshape): (Vec<usize>, Vec<usize>) = match s.op {
        Op::Flash => (
            vec![num_blocks, BLOCK_SIZE, h, d],
            vec![num_blocks, BLOCK_SIZE, h, d],
        ),
        Op::Paged => (
            vec![num_blocks, h, d / x, BLOCK_SIZE, x],
            vec![num_blocks, h, d, BLOCK_SIZE],
        ),
    };
    let dtype = s.cache.dtype();
    let kv_dtype = s.cache.kv_cache_dtype();
    Box::new(move || {
        let mut a = arena_buf(&arena, arena_bytes);
        let (kb, vb) = a[..].split_at_mut(half);
        let slots = windows.next();
        let sm = TensorView::new(slots, &[t]).unwrap();
        let k = TensorView::new(&key, &[t, h, d]).unwrap();
        let v = TensorView::new(&value, &[t, h, d]).unwrap();
        let mut kc =
            TensorViewMut::from_bytes(&mut kb[..cache_bytes], dtype, &kshape, None).unwrap();
        let mut vc =
            TensorViewMut::from_bytes(&mut vb[..cache_bytes], dtype, &vshape, None).unwrap();
        let ks = TensorView::new(&scale, &[1]).unwrap();
        let r = match s.op {
            Op::Flash => crate::reshape_and_cache_flash(
                &k,
                &v,
                &mut kc,
                Some(&mut vc),
                &sm,
                kv_dtype,
                Some(&ks),
                Some(&ks),
            ),
            Op::Paged => crate::reshape_and_cache(
                &k,
                &v,
                &mut kc,
                &mut vc,
                &sm,
                kv_dtype,
                Some(&ks),
                Some(&ks),
            ),
        };
        r.expect("benchmark arguments are valid");
    })
}

/// One `copy_blocks` case: `pairs` (src, dst) blocks in one layer's key and
/// value caches `[nb, bs, H, D]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyShape {
    pub pairs: usize,
    pub heads: usize,
    pub head_size: usize,
    pub cache: CacheDtype,
}

impl CopyShape {
    /// Bytes one call moves: each pair reads and writes a key and a value block.
    pub fn bytes(&self) -> f64 {
        (self.pairs * 2 * 2 * BLOCK_SIZE * self.heads * self.head_size * self.cache.size()) as f64
    }
}

/// Forks of 16, 256 and 4096 tokens (1, 16, 256 blocks of 16).
pub fn copy_shapes() -> Vec<CopyShape> {
    let mut v = Vec::new();
    for pairs in [1, 16, 256] {
        for (heads, head_size) in [(2, 256), (8, 128)] {
            for cache in [CacheDtype::Bf16, CacheDtype::Fp8] {
                v.push(CopyShape {
                    pairs,
                    heads,
                    head_size,
                    cache,
                });
            }
        }
    }
    v
}

fn copy_case(shape: CopyShape, cfg: &Config, arena: Arena) -> Case {
    let info = CaseInfo {
        family: "kv_cache",
        op: "copy_blocks",
        shape: format!(
            "pairs={} H={} D={} bs={BLOCK_SIZE} L=1",
            shape.pairs, shape.heads, shape.head_size
        ),
        dtype: match shape.cache {
            CacheDtype::Bf16 => "bf16",
            CacheDtype::Fp8 => "fp8e4m3",
        }
        .into(),
        work: Work {
            bytes: shape.bytes(),
            flops: 0.0,
            bound: Bound::Copy,
            peak: Peak::Fp32,
        },
        floor: None,
    };
    let arena_bytes = cfg.cold_bytes();
    let seed = cfg.seed ^ (shape.pairs * 131 + shape.heads) as u64;
    Case::new(info, move || {
        let (h, d) = (shape.heads, shape.head_size);
        let half = arena_bytes / 2;
        let block_bytes = BLOCK_SIZE * h * d * shape.cache.size();
        let num_blocks = half / block_bytes;
        let cache_bytes = num_blocks * block_bytes;
        drop(arena_buf(&arena, arena_bytes));
        let mut blocks: Vec<i64> = (0..num_blocks as i64).collect();
        Rng(seed).shuffle(&mut blocks);
        // Each call copies the next `pairs` blocks of the permutation onto the
        // `pairs` after them: distinct sources and destinations.
        let n = shape.pairs;
        let mapping: Vec<i64> = blocks
            .chunks_exact(2 * n)
            .flat_map(|c| (0..n).flat_map(move |i| [c[i], c[n + i]]))
            .collect();
        let calls = mapping.len() / (2 * n);
        let mut call = 0;
        let dtype = shape.cache.dtype();
        let cshape = [num_blocks, BLOCK_SIZE, h, d];
        Box::new(move || {
            let mut a = arena_buf(&arena, arena_bytes);
            let (kb, vb) = a[..].split_at_mut(half);
            let m = &mapping[call * 2 * n..(call + 1) * 2 * n];
            call = (call + 1) % calls;
            let bm = TensorView::new(m, &[n, 2]).unwrap();
            let kc =
                TensorViewMut::from_bytes(&mut kb[..cache_bytes], dtype, &cshape, None).unwrap();
            let vc =
                TensorViewMut::from_bytes(&mut vb[..cache_bytes], dtype, &cshape, None).unwrap();
            crate::copy_blocks(&mut [kc], &mut [vc], &bm).expect("benchmark arguments are valid");
        })
    })
}

/// Every KV-cache case, sharing one cold arena.
pub fn cases(cfg: &Config) -> Vec<Case> {
    let arena: Arena = Rc::new(RefCell::new(None));
    let mut v: Vec<Case> = write_shapes()
        .into_iter()
        .map(|s| write_case(s, cfg, arena.clone()))
        .collect();
    v.extend(
        copy_shapes()
            .into_iter()
            .map(|s| copy_case(s, cfg, arena.clone())),
    );
    v
}
