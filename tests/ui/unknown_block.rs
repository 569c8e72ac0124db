use resnetc_macros::resnet;
resnet! { pub struct Net { block: triple, layers: [1], input: [3, 32, 32] } }
fn main() {}
