//! A small Qwen3-Next / Qwen3.5-style hybrid decoder built only from xpu-ops
//! ops, with random weights from a fixed seed: the library's end-to-end demo.
//!
//! Every layer is `RMSNorm → mixer → fused add+RMSNorm → SwiGLU MLP`, the
//! mixer being either a Gated DeltaNet block (in-proj [`linear`](crate::linear),
//! [`causal_conv1d_fn`](crate::causal_conv1d_fn) /
//! [`causal_conv1d_update`](crate::causal_conv1d_update),
//! [`fused_gdn_gating`](crate::fused_gdn_gating),
//! [`chunk_gated_delta_rule`](crate::chunk_gated_delta_rule) /
//! [`fused_recurrent_gated_delta_rule`](crate::fused_recurrent_gated_delta_rule),
//! [`rms_norm_gated`](crate::rms_norm_gated), out-proj) or full attention
//! (qkv [`linear`](crate::linear), per-head q/k RMSNorm, partial NeoX
//! [`rotary_embedding`](crate::rotary_embedding),
//! [`reshape_and_cache_flash`](crate::reshape_and_cache_flash) +
//! [`flash_attn_varlen_func`](crate::flash_attn_varlen_func), or
//! [`reshape_and_cache`](crate::reshape_and_cache) +
//! [`paged_attention_v1`](crate::paged_attention_v1)/`v2`, o-proj), then a
//! final norm, the lm_head and [`sampler_forward`](crate::sampler_forward)
//! with per-request seeds.
//!
//! [`run_demo`] prefills several prompts of different lengths in chunks
//! (varlen batches), decodes with the paged KV cache and the GDN conv/state
//! pools, times every op, measures the decode step against the machine's read
//! bandwidth, and replays the same schedule through [`crate::reference`]
//! (teacher-forced on the tokens xpu-ops produced) to report the alignment of
//! the logits and whether the tokens agree.
//!
//! ```
//! use xpu_ops::model::{run_demo, DemoOptions, ModelConfig};
//! let opts = DemoOptions {
//!     config: ModelConfig::tiny(),
//!     prompt_lens: vec![5, 9],
//!     decode_steps: 2,
//!     measure_bandwidth: false,
//!     ..DemoOptions::default()
//! };
//! let report = run_demo(opts)?;
//! assert_eq!(report.generated[0].len(), 3); // one token from prefill + 2 decode steps
//! assert!(report.alignment.as_ref().unwrap().tokens_agree());
//! # Ok::<(), xpu_ops::Error>(())
//! ```

pub mod engine;
pub mod forward;
pub mod reference;
pub mod report;
pub mod weights;

use crate::error::{bail, Result};

pub use engine::{run_demo, Engine};
pub use forward::{Backend, XpuBackend};
pub use reference::RefBackend;
pub use report::Report;
pub use weights::Weights;

/// The mixer of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated DeltaNet (linear attention) with a causal conv in front.
    Gdn,
    /// Full softmax attention over the paged KV cache.
    Attention,
}

/// Which KV-cache layout and attention kernels the attention layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBackend {
    /// vLLM v1 / FlashAttention: flash-layout cache written by
    /// `reshape_and_cache_flash`, `flash_attn_varlen_func` for prefill chunks
    /// and decode alike.
    Flash,
    /// vLLM v0: paged cache written by `reshape_and_cache`, decode through
    /// `paged_attention_v1` (or `v2` when a context spans several 512-token
    /// partitions and the batch is small); prefill chunks through
    /// `paged_attention_v1` with one query row per "sequence" (each token sees
    /// its own causal prefix of its request's block table).
    Paged,
}

impl AttentionBackend {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "flash" | "varlen" => Ok(AttentionBackend::Flash),
            "paged" => Ok(AttentionBackend::Paged),
            other => bail!(
                InvalidArgument,
                "unknown attention backend {other:?}; expected \"flash\" or \"paged\""
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttentionBackend::Flash => "flash (reshape_and_cache_flash + flash_attn_varlen_func)",
            AttentionBackend::Paged => "paged (reshape_and_cache + paged_attention_v1/v2)",
        }
    }
}

/// Model shapes. Every projection is bf16; the GDN recurrent state is fp32.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub hidden_size: usize,
    /// SwiGLU width (for the Qwen3-Next config: the 10 routed + 1 shared
    /// experts' width of one token, 11 × 512, as one dense MLP).
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub layers: Vec<LayerKind>,
    pub num_attention_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Rotary dims = head_dim × this (Qwen3-Next: 0.25).
    pub partial_rotary_factor: f64,
    pub rope_theta: f64,
    pub linear_num_key_heads: usize,
    pub linear_num_value_heads: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub conv_kernel: usize,
    pub rms_norm_eps: f64,
    /// KV-cache block size (tokens per block).
    pub block_size: usize,
    pub seed: u64,
}

impl ModelConfig {
    /// `n` layers as in Qwen3-Next: three GDN layers, then one attention layer, repeated.
    pub fn hybrid_layers(n: usize) -> Vec<LayerKind> {
        (0..n)
            .map(|i| {
                if i % 4 == 3 {
                    LayerKind::Attention
                } else {
                    LayerKind::Gdn
                }
            })
            .collect()
    }

    /// The default demo model: hidden 256, 4 layers (3 GDN + 1 attention),
    /// vocab 8192, attention 4 q / 2 kv heads × 64, GDN 4 key / 8 value
    /// heads × 32, conv width 4. Runs in well under a second here, reference
    /// included.
    pub fn small() -> Self {
        ModelConfig {
            name: "small".into(),
            hidden_size: 256,
            intermediate_size: 768,
            vocab_size: 8192,
            layers: Self::hybrid_layers(4),
            num_attention_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            partial_rotary_factor: 0.25,
            rope_theta: 10_000_000.0,
            linear_num_key_heads: 4,
            linear_num_value_heads: 8,
            linear_key_head_dim: 32,
            linear_value_head_dim: 32,
            conv_kernel: 4,
            rms_norm_eps: 1e-6,
            block_size: 16,
            seed: 0x5eed,
        }
    }

    /// The smallest shapes every kernel accepts (head dims 32, block 8): for tests.
    pub fn tiny() -> Self {
        ModelConfig {
            name: "tiny".into(),
            hidden_size: 64,
            intermediate_size: 128,
            vocab_size: 512,
            layers: Self::hybrid_layers(4),
            num_attention_heads: 2,
            num_kv_heads: 1,
            head_dim: 32,
            partial_rotary_factor: 0.5,
            rope_theta: 10_000.0,
            linear_num_key_heads: 2,
            linear_num_value_heads: 4,
            linear_key_head_dim: 16,
            linear_value_head_dim: 16,
            conv_kernel: 4,
            rms_norm_eps: 1e-6,
            block_size: 8,
            seed: 7,
        }
    }

    /// Qwen3-Next-80B-A3B's layer shapes (PERF.md): hidden 2048, attention
    /// 16 q / 2 kv heads × 256 with rotary on a quarter of each head, GDN
    /// 16 key / 32 value heads × 128, conv width 4, vocab 151,936; the MoE
    /// block as one dense SwiGLU of the active width (11 × 512 = 5632).
    /// Only `layers` layers (3 GDN : 1 attention), so it fits and runs here.
    pub fn qwen3_next(layers: usize) -> Self {
        ModelConfig {
            name: format!("qwen3_next ({layers} layers)"),
            hidden_size: 2048,
            intermediate_size: 5632,
            vocab_size: 151_936,
            layers: Self::hybrid_layers(layers),
            num_attention_heads: 16,
            num_kv_heads: 2,
            head_dim: 256,
            partial_rotary_factor: 0.25,
            rope_theta: 10_000_000.0,
            linear_num_key_heads: 16,
            linear_num_value_heads: 32,
            linear_key_head_dim: 128,
            linear_value_head_dim: 128,
            conv_kernel: 4,
            rms_norm_eps: 1e-6,
            block_size: 16,
            seed: 0x5eed,
        }
    }

    /// A config by name: `small` (default), `tiny`, `qwen3_next`.
    pub fn by_name(name: &str, layers: Option<usize>) -> Result<Self> {
        let mut c = match name {
            "small" | "default" => Self::small(),
            "tiny" => Self::tiny(),
            "qwen3_next" | "qwen3-next" => Self::qwen3_next(layers.unwrap_or(4)),
            other => bail!(
                InvalidArgument,
                "unknown model config {other:?}; expected small, tiny or qwen3_next"
            ),
        };
        if let Some(n) = layers {
            if n == 0 {
                bail!(InvalidValue, "--layers must be at least 1");
            }
            c.layers = Self::hybrid_layers(n);
            if c.name.starts_with("qwen3_next") {
                c.name = format!("qwen3_next ({n} layers)");
            }
        }
        Ok(c)
    }

    pub fn rotary_dim(&self) -> usize {
        ((self.head_dim as f64 * self.partial_rotary_factor) as usize) & !1
    }
    /// Width of the GDN keys (and queries): key heads × key head dim.
    pub fn key_dim(&self) -> usize {
        self.linear_num_key_heads * self.linear_key_head_dim
    }
    pub fn value_dim(&self) -> usize {
        self.linear_num_value_heads * self.linear_value_head_dim
    }
    /// Channels of the causal conv: q, k and v.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
    /// Width of the fused GDN in-projection: `[q | k | v | z | b | a]`.
    pub fn gdn_proj_dim(&self) -> usize {
        self.conv_dim() + self.value_dim() + 2 * self.linear_num_value_heads
    }
    /// Width of the fused attention projection: `[q | k | v]`.
    pub fn qkv_dim(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim
    }
    pub fn num_gdn_layers(&self) -> usize {
        self.layers.iter().filter(|&&k| k == LayerKind::Gdn).count()
    }
    pub fn num_attention_layers(&self) -> usize {
        self.layers.len() - self.num_gdn_layers()
    }

    /// Checks the shapes against what the kernels support.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.layers.is_empty() || c.hidden_size == 0 || c.vocab_size == 0 {
            bail!(
                InvalidValue,
                "model needs layers, hidden_size and vocab_size"
            );
        }
        if c.num_kv_heads == 0 || c.num_attention_heads % c.num_kv_heads != 0 {
            bail!(
                InvalidValue,
                "num_attention_heads {} is not a multiple of num_kv_heads {}",
                c.num_attention_heads,
                c.num_kv_heads
            );
        }
        if c.linear_num_key_heads == 0 || c.linear_num_value_heads % c.linear_num_key_heads != 0 {
            bail!(
                InvalidValue,
                "linear_num_value_heads {} is not a multiple of linear_num_key_heads {}",
                c.linear_num_value_heads,
                c.linear_num_key_heads
            );
        }
        if c.rotary_dim() == 0 || c.rotary_dim() > c.head_dim {
            bail!(InvalidValue, "rotary dim {} out of range", c.rotary_dim());
        }
        if c.block_size == 0 {
            bail!(InvalidValue, "block_size must be positive");
        }
        Ok(())
    }
}

/// Everything [`run_demo`] needs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub config: ModelConfig,
    /// One request per entry: its prompt length (tokens drawn from the seed).
    pub prompt_lens: Vec<usize>,
    /// Decode steps after the prefill (each request gets `1 + decode_steps` tokens).
    pub decode_steps: usize,
    /// Token budget of one prefill step (`max_num_batched_tokens`): prompts
    /// longer than what is left of it are split into chunks.
    pub prefill_chunk: usize,
    pub attention: AttentionBackend,
    /// Per-request temperatures, cycled over the requests (0 = greedy).
    pub temperatures: Vec<f32>,
    pub top_k: i64,
    pub top_p: f32,
    /// Per-request Philox seeds are `sampling_seed + request index`.
    pub sampling_seed: u64,
    /// Runs of the xpu-ops schedule (fresh caches each); the fastest is
    /// reported (this machine is shared: single runs are noisy).
    pub repeats: usize,
    /// Replay through the reference and report the alignment.
    pub reference: bool,
    /// Measure the read bandwidth for the decode roofline (~0.5 s).
    pub measure_bandwidth: bool,
    /// Bytes of the bandwidth probe's buffer (well past the last-level cache).
    pub bandwidth_probe_bytes: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            config: ModelConfig::small(),
            prompt_lens: vec![37, 100, 13, 70],
            decode_steps: 16,
            prefill_chunk: 64,
            attention: AttentionBackend::Flash,
            temperatures: vec![0.0, 0.8, 1.0, 0.6],
            top_k: 50,
            top_p: 0.95,
            sampling_seed: 1234,
            repeats: 3,
            reference: true,
            measure_bandwidth: true,
            bandwidth_probe_bytes: 256 << 20,
        }
    }
}

impl DemoOptions {
    /// The defaults for a named config: `qwen3_next` gets longer prompts, a
    /// bigger prefill budget and no reference (the fp64 reference would take
    /// minutes on its shapes).
    pub fn for_config(config: ModelConfig) -> Self {
        let big = config.hidden_size >= 1024;
        DemoOptions {
            prompt_lens: if big {
                vec![128, 300, 45, 17]
            } else {
                DemoOptions::default().prompt_lens
            },
            decode_steps: if big { 8 } else { 16 },
            prefill_chunk: if big { 256 } else { 64 },
            reference: !big,
            repeats: if big { 1 } else { 3 },
            config,
            ..DemoOptions::default()
        }
    }

    /// Parses command-line flags (after the subcommand):
    /// `--config small|tiny|qwen3_next`, `--layers N`, `--prompts 37,100,13`,
    /// `--decode N`, `--chunk N`, `--attention flash|paged`,
    /// `--temperatures 0,0.8`, `--top-k N`, `--top-p P`, `--seed N`,
    /// `--sampling-seed N`, `--repeats N`, `--reference` / `--no-reference`,
    /// `--no-bandwidth`, `--threads N` (sets the pool size), `--isa TIER`
    /// (forces a tier). `--flag=value` works too.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self> {
        // `--flag=value` is `--flag value`.
        let args: Vec<String> = args
            .into_iter()
            .flat_map(|a| match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => vec![f.to_string(), v.to_string()],
                _ => vec![a],
            })
            .collect();
        let value = |i: usize| -> Result<&str> {
            match args.get(i + 1) {
                Some(v) => Ok(v.as_str()),
                None => bail!(InvalidArgument, "{} needs a value", args[i]),
            }
        };
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T> {
            match v.parse() {
                Ok(x) => Ok(x),
                Err(_) => bail!(InvalidArgument, "{flag}: cannot parse {v:?}"),
            }
        }
        // The config first, since the other defaults depend on it.
        let (mut name, mut layers) = ("small".to_string(), None);
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--config" | "--model" => name = value(i)?.to_string(),
                "--qwen3-next" | "--qwen3_next" => {
                    name = "qwen3_next".into();
                    i += 1;
                    continue;
                }
                "--layers" => layers = Some(num("--layers", value(i)?)?),
                _ => {}
            }
            i += if args[i].starts_with("--")
                && !matches!(
                    args[i].as_str(),
                    "--reference" | "--no-reference" | "--no-bandwidth"
                ) {
                2
            } else {
                1
            };
        }
        let mut o = DemoOptions::for_config(ModelConfig::by_name(&name, layers)?);
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            let mut step = 2;
            match flag {
                "--config" | "--model" | "--layers" => {}
                "--qwen3-next" | "--qwen3_next" => step = 1,
                "--prompts" => {
                    o.prompt_lens = value(i)?
                        .split(',')
                        .map(|s| num(flag, s.trim()))
                        .collect::<Result<_>>()?
                }
                "--decode" => o.decode_steps = num(flag, value(i)?)?,
                "--chunk" => o.prefill_chunk = num(flag, value(i)?)?,
                "--attention" => o.attention = AttentionBackend::parse(value(i)?)?,
                "--temperatures" => {
                    o.temperatures = value(i)?
                        .split(',')
                        .map(|s| num(flag, s.trim()))
                        .collect::<Result<_>>()?
                }
                "--top-k" => o.top_k = num(flag, value(i)?)?,
                "--top-p" => o.top_p = num(flag, value(i)?)?,
                "--seed" => o.config.seed = num(flag, value(i)?)?,
                "--sampling-seed" => o.sampling_seed = num(flag, value(i)?)?,
                "--repeats" => o.repeats = num(flag, value(i)?)?,
                "--threads" => crate::threading::set_num_threads(num(flag, value(i)?)?)?,
                "--isa" => {
                    let v = value(i)?;
                    match crate::platform::Isa::parse(v) {
                        Some(isa) => crate::platform::set_isa(isa)?,
                        None => bail!(
                            InvalidArgument,
                            "--isa {v:?}: expected generic, avx2, avx512, amx or neon"
                        ),
                    }
                }
                "--reference" => {
                    o.reference = true;
                    step = 1
                }
                "--no-reference" => {
                    o.reference = false;
                    step = 1
                }
                "--no-bandwidth" => {
                    o.measure_bandwidth = false;
                    step = 1
                }
                other => bail!(
                    InvalidArgument,
                    "unknown demo flag {other:?} (flags: --config small|tiny|qwen3_next, \
                     --layers, --prompts, --decode, --chunk, --attention flash|paged, \
                     --temperatures, --top-k, --top-p, --seed, --sampling-seed, --repeats, --threads, --isa, \
                     --reference, --no-reference, --no-bandwidth)"
                ),
            }
            i += step;
        }
        Ok(o)
    }

    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.prompt_lens.is_empty() || self.prompt_lens.contains(&0) {
            bail!(
                InvalidValue,
                "every request needs a prompt of at least one token"
            );
        }
        if self.prefill_chunk == 0 {
            bail!(InvalidValue, "the prefill chunk must be at least one token");
        }
        if self.temperatures.is_empty() {
            bail!(InvalidValue, "temperatures must not be empty");
        }
        Ok(())
    }
}

/// SplitMix64: the demo's deterministic generator (prompts, weights).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32) * (2.0 / (1u64 << 24) as f32) - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize
    }
}
