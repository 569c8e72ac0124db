use resnetc_macros::resnet;
resnet! { pub struct Net { block: basic, layers: [1, 1], groups: 32, input: [3, 32, 32] } }
fn main() {}
