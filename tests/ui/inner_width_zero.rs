use resnetc_macros::resnet;
resnet! { pub struct Net { block: bottleneck, layers: [1], widths: [8], width_per_group: 4, input: [3, 32, 32] } }
fn main() {}
