//! ImageNet-1k class names, for printing the top-5 of an image.

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The name of ImageNet class `index`, or `class <index>` past the 1000 known ones.
pub fn imagenet_name(index: usize) -> String {
    NAMES.lines().nth(index).map_or_else(|| format!("class {index}"), str::to_string)
}
