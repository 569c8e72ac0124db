//! ImageNet-1k class names, for printing the top-5 of an image.

use std::fmt::Write;

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The name of ImageNet class `index`, or `class <index>` past the 1000 known ones.
pub fn imagenet_name(index: usize) -> String {
    NAMES.lines().nth(index).map_or_else(|| format!("class {index}"), str::to_string)
}

/// Softmax over the first row of `logits` (`classes` wide) and the five most likely
/// classes, one per line: probability, index, name (ImageNet names for 1000 classes).
pub fn top5_text(logits: &[f32], classes: usize) -> String {
    let row = &logits[..classes];
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut order: Vec<usize> = (0..classes).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let mut out = String::new();
    for &i in order.iter().take(5) {
        let name = if classes == 1000 { imagenet_name(i) } else { format!("class {i}") };
        let _ = writeln!(out, "{:>6.2}%  {i:>4}  {name}", 100.0 * exp[i] / sum);
    }
    out
}
