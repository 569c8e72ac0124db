//! Random valid specs for differential tests: small enough to run in milliseconds
//! (`random_toml`; `random_toml_sized` makes larger ones), varied
//! enough to hit every block kind, stem, pool, stride placement, group count, channel
//! count that is not a multiple of any vector width, odd or tiny input sizes, and convs
//! the cost model runs as Winograd.

use resnetc::spec::{self, Spec};

/// A tiny deterministic generator (SplitMix64) so failures reproduce from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() - 1)]
    }
}

/// The TOML text of a random valid spec.
pub fn random_toml(rng: &mut Rng) -> String {
    random_toml_sized(rng, 32, 40)
}

/// The TOML text of a random valid spec with stage widths up to `max_width` and input
/// sides up to `max_side`: larger ones reach the kernels small specs do not (Winograd
/// with raw weights, bands, wide register tiles).
pub fn random_toml_sized(rng: &mut Rng, max_width: usize, max_side: usize) -> String {
    let bottleneck = rng.range(0, 1) == 1;
    let stages = rng.range(1, 4);
    let layers: Vec<usize> = (0..stages).map(|_| rng.range(1, 2)).collect();
    // Up to 32 channels (`random_toml`), so that many specs have layers wide enough for
    // Winograd.
    let widths: Vec<usize> = (0..stages).map(|_| rng.range(1, max_width)).collect();
    let imagenet = rng.range(0, 2) == 0;
    let mut t = format!(
        "block = \"{}\"\nlayers = {layers:?}\nwidths = {widths:?}\nstem = \"{}\"\n",
        if bottleneck { "bottleneck" } else { "basic" },
        if imagenet { "imagenet" } else { "cifar" }
    );
    if rng.range(0, 1) == 1 {
        t += &format!("stem_width = {}\n", rng.range(1, 20));
    }
    if imagenet && rng.range(0, 1) == 1 {
        t += &format!("stem_pool = \"{}\"\n", rng.pick(&["torchvision", "caffe"]));
    }
    if bottleneck {
        let groups = *rng.pick(&[1, 1, 2, 3, 4, 8]);
        // Inner width int(w * wpg / 64) * groups must be at least one for every stage.
        let min_w = *widths.iter().min().unwrap();
        let wpg = (64usize.div_ceil(min_w)).max(*rng.pick(&[4, 16, 32, 64, 128]));
        t += &format!("groups = {groups}\nwidth_per_group = {wpg}\nstride_in = \"{}\"\n", rng.pick(&["3x3", "1x1"]));
    }
    let (c, lo) = (rng.range(1, 4), if imagenet { 5 } else { 1 });
    let (h, w) = (rng.range(lo, max_side), rng.range(lo, max_side));
    t += &format!("num_classes = {}\ninput = [{c}, {h}, {w}]\n", rng.range(1, 20));
    t
}

/// A random valid spec, parsed by the real parser.
pub fn random_spec(rng: &mut Rng, name: &str) -> Spec {
    let text = random_toml(rng);
    spec::parse(&text, name).unwrap_or_else(|e| panic!("generated spec is invalid: {e:#}\n{text}"))
}
