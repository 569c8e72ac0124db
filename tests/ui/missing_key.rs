use resnetc_macros::resnet;
resnet! { pub struct Net { block: basic, input: [3, 32, 32] } }
fn main() {}
