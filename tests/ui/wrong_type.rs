use resnetc_macros::resnet;
resnet! { pub struct Net { block: basic, layers: 3, input: [3, 32, 32] } }
fn main() {}
