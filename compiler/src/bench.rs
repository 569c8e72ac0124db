//! Latency measurement of compiled models: medians over repeated runs after warm-up, with
//! GFLOP/s from the model's multiply-adds (2 FLOPs each). No timing lives in tests; this
//! is what `resnetc bench` and the benchmark scripts use.

use serde_json::{json, Value};

pub use resnetc_runtime::timing::{measure, summarize, Stats, MAX_RUNS, MIN_SECONDS, WARMUP};

/// GFLOP/s of `macs` multiply-adds in `ms` milliseconds.
pub fn gflops(macs: usize, ms: f64) -> f64 {
    2.0 * macs as f64 / (ms * 1e6)
}

/// One kernel's share of a run.
pub struct LayerTime {
    pub name: String,
    pub kernel: String,
    pub macs: usize,
    pub median_ms: f64,
}

pub struct Report {
    pub model: String,
    pub backend: String,
    pub threads: usize,
    pub batch: usize,
    pub macs_per_image: usize,
    pub compile_ms: f64,
    pub stats: Stats,
    pub layers: Vec<LayerTime>,
}

impl Report {
    pub fn gflops(&self) -> f64 {
        gflops(self.macs_per_image * self.batch, self.stats.median)
    }

    pub fn json(&self) -> Value {
        json!({
            "model": self.model,
            "backend": self.backend,
            "threads": self.threads,
            "batch": self.batch,
            "median_ms": self.stats.median,
            "min_ms": self.stats.min,
            "max_ms": self.stats.max,
            "runs": self.stats.runs,
            "gflops": self.gflops(),
            "images_per_s": self.batch as f64 * 1e3 / self.stats.median,
            "peak_rss_mb": resnetc_runtime::peak_rss_mb(),
            "compile_ms": self.compile_ms,
            "layers": self.layers.iter().map(|l| json!({
                "name": l.name, "kernel": l.kernel, "macs": l.macs, "median_ms": l.median_ms,
                "gflops": gflops(l.macs * self.batch, l.median_ms),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "{} ({} backend, {} thread(s), batch {}): median {:.3} ms (min {:.3}, max {:.3}, {} runs), {:.1} GFLOP/s, {:.1} images/s, compile {:.1} ms\n",
            self.model,
            self.backend,
            self.threads,
            self.batch,
            self.stats.median,
            self.stats.min,
            self.stats.max,
            self.stats.runs,
            self.gflops(),
            self.batch as f64 * 1e3 / self.stats.median,
            self.compile_ms
        );
        if !self.layers.is_empty() {
            out += &format!("{:<26} {:<44} {:>10} {:>9}\n", "layer", "kernel", "ms", "GFLOP/s");
            for l in &self.layers {
                out += &format!(
                    "{:<26} {:<44} {:>10.4} {:>9.1}\n",
                    l.name,
                    l.kernel,
                    l.median_ms,
                    gflops(l.macs * self.batch, l.median_ms)
                );
            }
        }
        out
    }
}
