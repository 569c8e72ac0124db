//! The model description: presets and TOML spec files, validated into a [`Spec`].
//!
//! Semantics are exactly torchvision's `ResNet` (see `../shared/DESIGN.md`, section 3).
//! Every error names the key (or the stage) at fault and says why.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::Path;
use toml::{Table, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convs; expansion 1.
    Basic,
    /// 1x1 reduce, 3x3, 1x1 expand; expansion 4.
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 7x7/2 pad 3 conv + BN + ReLU, then a 3x3/2 max-pool.
    Imagenet,
    /// 3x3/1 pad 1 conv + BN + ReLU, no pool.
    Cifar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StemPool {
    /// 3x3/2, padding 1, floor mode.
    Torchvision,
    /// 3x3/2, no padding, ceil mode (the last window clipped at the border).
    Caffe,
}

/// Which conv of a strided bottleneck carries the stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrideIn {
    /// The 3x3 conv (torchvision, ResNet v1.5).
    Conv3x3,
    /// The first 1x1 conv (the paper and Caffe, ResNet v1).
    Conv1x1,
}

/// A validated network description.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// Preset name or spec file stem; names the generated model.
    pub name: String,
    pub block: BlockKind,
    /// Blocks per stage; at least one stage, each with at least one block.
    pub layers: Vec<usize>,
    /// Base planes per stage, same length as `layers`.
    pub widths: Vec<usize>,
    pub stem: Stem,
    pub stem_width: usize,
    pub stem_pool: StemPool,
    pub groups: usize,
    pub width_per_group: usize,
    pub stride_in: StrideIn,
    pub num_classes: usize,
    /// Channels, height, width of one input image.
    pub input: [usize; 3],
}

impl Spec {
    /// Inner (3x3) width of a bottleneck block with `planes` base planes, as torchvision
    /// computes it: `int(planes * width_per_group / 64) * groups`.
    pub fn inner_width(&self, planes: usize) -> usize {
        planes * self.width_per_group / 64 * self.groups
    }

    /// Output channels of the last stage (the classifier's input features).
    pub fn final_channels(&self) -> usize {
        self.widths.last().copied().unwrap_or(0) * self.block.expansion()
    }
}

/// Names of the built-in presets, in the order `resnetc` lists them.
pub const PRESETS: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
];

/// A built-in preset by name.
pub fn preset(name: &str) -> Option<Spec> {
    use BlockKind::*;
    let imagenet = |block, layers: &[usize], groups, wpg| Spec {
        name: name.to_string(),
        block,
        layers: layers.to_vec(),
        widths: vec![64, 128, 256, 512],
        stem: Stem::Imagenet,
        stem_width: 64,
        stem_pool: StemPool::Torchvision,
        groups,
        width_per_group: wpg,
        stride_in: StrideIn::Conv3x3,
        num_classes: 1000,
        input: [3, 224, 224],
    };
    let cifar = |n: usize| Spec {
        name: name.to_string(),
        block: Basic,
        layers: vec![n; 3],
        widths: vec![16, 32, 64],
        stem: Stem::Cifar,
        stem_width: 16,
        stem_pool: StemPool::Torchvision,
        groups: 1,
        width_per_group: 64,
        stride_in: StrideIn::Conv3x3,
        num_classes: 10,
        input: [3, 32, 32],
    };
    Some(match name {
        "resnet18" => imagenet(Basic, &[2, 2, 2, 2], 1, 64),
        "resnet34" => imagenet(Basic, &[3, 4, 6, 3], 1, 64),
        "resnet50" => imagenet(Bottleneck, &[3, 4, 6, 3], 1, 64),
        "resnet101" => imagenet(Bottleneck, &[3, 4, 23, 3], 1, 64),
        "resnet152" => imagenet(Bottleneck, &[3, 8, 36, 3], 1, 64),
        "wide_resnet50_2" => imagenet(Bottleneck, &[3, 4, 6, 3], 1, 128),
        "wide_resnet101_2" => imagenet(Bottleneck, &[3, 4, 23, 3], 1, 128),
        "resnext50_32x4d" => imagenet(Bottleneck, &[3, 4, 6, 3], 32, 4),
        "resnext101_32x8d" => imagenet(Bottleneck, &[3, 4, 23, 3], 32, 8),
        "resnext101_64x4d" => imagenet(Bottleneck, &[3, 4, 23, 3], 64, 4),
        "resnet20" => cifar(3),
        "resnet32" => cifar(5),
        "resnet44" => cifar(7),
        "resnet56" => cifar(9),
        "resnet110" => cifar(18),
        _ => return None,
    })
}

/// Resolves a `<MODEL>` argument: a preset name, or a path to a `.toml` spec.
pub fn resolve(model: &str) -> Result<Spec> {
    if let Some(spec) = preset(model) {
        return Ok(spec);
    }
    let path = Path::new(model);
    if model.ends_with(".toml") || path.exists() {
        return load(path);
    }
    bail!("unknown model `{model}`: not a preset ({}) nor a .toml spec file", PRESETS.join(", "))
}

/// Loads and validates a TOML spec file.
pub fn load(path: &Path) -> Result<Spec> {
    let bytes = resnetc_runtime::read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    let name = path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    parse(&text, &name).with_context(|| path.display().to_string())
}

const KEYS: &[&str] = &[
    "block",
    "layers",
    "widths",
    "stem",
    "stem_width",
    "stem_pool",
    "groups",
    "width_per_group",
    "stride_in",
    "num_classes",
    "input",
];

/// Where a TOML parse error happened, as `line L, column C`.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {col}")
}

/// Parses and validates the text of a spec; `name` names the resulting model.
pub fn parse(text: &str, name: &str) -> Result<Spec> {
    let table: Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            let at = e.span().map(|s| format!(" at {}", line_col(text, s.start))).unwrap_or_default();
            bail!("invalid TOML{at}: {}", e.message().trim());
        }
    };
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            bail!("unknown key `{key}` (known keys: {})", KEYS.join(", "));
        }
    }
    let field = Fields(&table);
    let block = match field.string("block")?.as_deref() {
        Some("basic") => BlockKind::Basic,
        Some("bottleneck") => BlockKind::Bottleneck,
        Some(other) => bail!("key `block`: unknown block kind \"{other}\" (expected \"basic\" or \"bottleneck\")"),
        None => bail!("missing key `block` (\"basic\" or \"bottleneck\")"),
    };
    let layers = field.sizes("layers")?.context("missing key `layers` (blocks per stage, e.g. [2, 2, 2, 2])")?;
    if layers.is_empty() {
        bail!("key `layers`: empty; a network needs at least one stage");
    }
    if let Some(i) = layers.iter().position(|&n| n == 0) {
        bail!("key `layers`: stage {i} has 0 blocks; every stage needs at least one");
    }
    let widths = match field.sizes("widths")? {
        Some(w) => {
            if w.len() != layers.len() {
                bail!(
                    "key `widths`: {} entries but `layers` has {} stages; give one width per stage",
                    w.len(),
                    layers.len()
                );
            }
            if let Some(i) = w.iter().position(|&n| n == 0) {
                bail!("key `widths`: stage {i} has width 0");
            }
            w
        }
        // torchvision's 64, 128, 256, 512, continued by doubling past four stages.
        None => (0..layers.len()).map(|i| 64usize << i.min(20)).collect(),
    };
    let stem = match field.string("stem")?.as_deref() {
        None | Some("imagenet") => Stem::Imagenet,
        Some("cifar") => Stem::Cifar,
        Some(other) => {
            bail!("key `stem`: unknown stem \"{other}\" (expected \"imagenet\" or \"cifar\")")
        }
    };
    let stem_width = match field.size("stem_width")? {
        Some(0) => bail!("key `stem_width`: must be at least 1"),
        Some(w) => w,
        None if stem == Stem::Cifar => widths[0],
        None => 64,
    };
    let stem_pool = match field.string("stem_pool")?.as_deref() {
        Some(_) if stem == Stem::Cifar => {
            bail!("key `stem_pool`: the cifar stem has no pool; remove the key")
        }
        None | Some("torchvision") => StemPool::Torchvision,
        Some("caffe") => StemPool::Caffe,
        Some(other) => bail!("key `stem_pool`: unknown pool \"{other}\" (expected \"torchvision\" or \"caffe\")"),
    };
    let groups = field.size("groups")?;
    let width_per_group = field.size("width_per_group")?;
    let stride_in = field.string("stride_in")?;
    if block == BlockKind::Basic {
        if groups.is_some_and(|g| g != 1) {
            bail!("key `groups`: basic blocks support only groups = 1 (grouped convs need block = \"bottleneck\")");
        }
        if width_per_group.is_some_and(|w| w != 64) {
            bail!("key `width_per_group`: basic blocks support only 64 (use block = \"bottleneck\")");
        }
        if stride_in.as_deref().is_some_and(|s| s != "3x3") {
            bail!("key `stride_in`: basic blocks always stride in their first 3x3 conv");
        }
    }
    let groups = match groups {
        Some(0) => bail!("key `groups`: must be at least 1"),
        g => g.unwrap_or(1),
    };
    let width_per_group = match width_per_group {
        Some(0) => bail!("key `width_per_group`: must be at least 1"),
        w => w.unwrap_or(64),
    };
    let stride_in = match stride_in.as_deref() {
        None | Some("3x3") => StrideIn::Conv3x3,
        Some("1x1") => StrideIn::Conv1x1,
        Some(other) => {
            bail!("key `stride_in`: unknown value \"{other}\" (expected \"3x3\" or \"1x1\")")
        }
    };
    let num_classes = match field.size("num_classes")? {
        Some(0) => bail!("key `num_classes`: must be at least 1"),
        n => n.unwrap_or(1000),
    };
    let input = match field.sizes("input")? {
        None if stem == Stem::Cifar => [3, 32, 32],
        None => [3, 224, 224],
        Some(v) => match v[..] {
            [c, h, w] if c > 0 && h > 0 && w > 0 => [c, h, w],
            [_, _, _] => bail!("key `input`: every size must be at least 1, got {v:?}"),
            _ => bail!("key `input`: expected [C, H, W] (3 sizes), got {} entries", v.len()),
        },
    };
    let spec = Spec {
        name: name.to_string(),
        block,
        layers,
        widths,
        stem,
        stem_width,
        stem_pool,
        groups,
        width_per_group,
        stride_in,
        num_classes,
        input,
    };
    let blocks: usize = spec.layers.iter().sum();
    if blocks > MAX_BLOCKS {
        bail!("key `layers`: {blocks} blocks in all, more than the {MAX_BLOCKS} resnetc builds");
    }
    if block == BlockKind::Bottleneck {
        for (i, &planes) in spec.widths.iter().enumerate() {
            // Checked before `inner_width`, whose product would overflow.
            let inner = planes as u128 * width_per_group as u128 / 64 * groups as u128;
            if inner > MAX_SIZE as u128 {
                let keys = match (groups != 1, width_per_group != 64) {
                    (true, true) => "keys `groups` and `width_per_group`",
                    (false, true) => "key `width_per_group`",
                    _ => "key `groups`",
                };
                bail!(
                    "{keys}: stage {i} (width {planes}) gets bottleneck inner width \
                     int({planes} * {width_per_group} / 64) * {groups} = {inner}, more than {MAX_SIZE} channels"
                );
            }
            if spec.inner_width(planes) == 0 {
                bail!(
                    "key `width_per_group`: stage {i} (width {planes}) gets bottleneck inner width \
                     int({planes} * {width_per_group} / 64) * {groups} = 0"
                );
            }
        }
    }
    Ok(spec)
}

/// Typed access to the spec's TOML table, with errors naming the key.
struct Fields<'a>(&'a Table);

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Largest size accepted for any single spec number (and for a bottleneck's inner width):
/// keeps arithmetic far from overflow.
const MAX_SIZE: i64 = 1 << 24;

/// Most blocks a spec may have over all its stages (ResNet-1202 has 600): the graph and
/// the generated code grow with each, so a mistyped count should fail here, not after
/// minutes and gigabytes.
const MAX_BLOCKS: usize = 10_000;

fn to_size(key: &str, v: &Value) -> Result<usize> {
    match v {
        Value::Integer(i) if *i < 0 => bail!("key `{key}`: must not be negative, got {i}"),
        Value::Integer(i) if *i > MAX_SIZE => {
            bail!("key `{key}`: {i} is too large (limit {MAX_SIZE})")
        }
        Value::Integer(i) => Ok(*i as usize),
        other => bail!("key `{key}`: expected an integer, found {}", type_name(other)),
    }
}

impl Fields<'_> {
    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!("key `{key}`: expected a string, found {}", type_name(other)),
        }
    }

    fn size(&self, key: &str) -> Result<Option<usize>> {
        self.0.get(key).map(|v| to_size(key, v)).transpose()
    }

    fn sizes(&self, key: &str) -> Result<Option<Vec<usize>>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items.iter().map(|v| to_size(key, v)).collect::<Result<_>>().map(Some),
            Some(other) => bail!("key `{key}`: expected an array of integers, found {}", type_name(other)),
        }
    }
}

impl fmt::Display for Spec {
    /// The spec as TOML, with every key explicit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |s: &str| format!("\"{s}\"");
        writeln!(
            f,
            "block = {}",
            q(match self.block {
                BlockKind::Basic => "basic",
                BlockKind::Bottleneck => "bottleneck",
            })
        )?;
        writeln!(f, "layers = {:?}", self.layers)?;
        writeln!(f, "widths = {:?}", self.widths)?;
        writeln!(
            f,
            "stem = {}",
            q(match self.stem {
                Stem::Imagenet => "imagenet",
                Stem::Cifar => "cifar",
            })
        )?;
        writeln!(f, "stem_width = {}", self.stem_width)?;
        if self.stem == Stem::Imagenet {
            writeln!(
                f,
                "stem_pool = {}",
                q(match self.stem_pool {
                    StemPool::Torchvision => "torchvision",
                    StemPool::Caffe => "caffe",
                })
            )?;
        }
        if self.block == BlockKind::Bottleneck {
            writeln!(f, "groups = {}", self.groups)?;
            writeln!(f, "width_per_group = {}", self.width_per_group)?;
            writeln!(
                f,
                "stride_in = {}",
                q(match self.stride_in {
                    StrideIn::Conv3x3 => "3x3",
                    StrideIn::Conv1x1 => "1x1",
                })
            )?;
        }
        writeln!(f, "num_classes = {}", self.num_classes)?;
        writeln!(f, "input = {:?}", self.input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, "t").unwrap_err())
    }

    #[test]
    fn every_preset_round_trips_through_toml() {
        for name in PRESETS {
            let spec = preset(name).unwrap();
            assert_eq!(parse(&spec.to_string(), name).unwrap(), spec, "{name}");
        }
    }

    #[test]
    fn defaults_follow_torchvision() {
        let s = parse("block = \"bottleneck\"\nlayers = [3, 4, 6, 3]", "r50").unwrap();
        assert_eq!(s, preset("resnet50").unwrap().clone_named("r50"));
        let c = parse("block = \"basic\"\nlayers = [1]\nwidths = [8]\nstem = \"cifar\"", "c").unwrap();
        assert_eq!((c.stem_width, c.input, c.num_classes), (8, [3, 32, 32], 1000));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("block = \"basic\"\nlayers = [2]\ncolour = 3").contains("unknown key `colour`"));
        assert!(err("block = \"triple\"\nlayers = [2]").contains("key `block`: unknown block kind \"triple\""));
        assert!(err("block = \"basic\"\nlayers = []").contains("key `layers`: empty"));
        assert!(err("block = \"basic\"\nlayers = \"2\"").contains("key `layers`: expected an array"));
        assert!(err("block = \"basic\"\nlayers = [2, -1]").contains("key `layers`: must not be negative"));
        assert!(err("block = \"basic\"\nlayers = [2]\ngroups = 2").contains("key `groups`"));
        assert!(err("block = \"basic\"\nlayers = [2]\nwidths = [1, 2]").contains("key `widths`: 2 entries"));
        assert!(err("layers = [2]").contains("missing key `block`"));
        assert!(err("block = \"basic\"\nlayers = [2]\ninput = [3, 0, 4]").contains("key `input`"));
        assert!(err("block = \"bottleneck\"\nlayers = [1]\nwidths = [8]\nwidth_per_group = 4").contains("inner width"));
        assert!(err("block = \"basic\"\nlayers = [2\n").contains("invalid TOML at line"));
        assert!(err("block = \"basic\"\nlayers = [2]\nstem = \"cifar\"\nstem_pool = \"caffe\"").contains("stem_pool"));
    }

    impl Spec {
        fn clone_named(&self, name: &str) -> Spec {
            Spec { name: name.to_string(), ..self.clone() }
        }
    }
}
