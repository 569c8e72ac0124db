use resnetc_macros::resnet;
resnet! { pub struct Net { block: basic, layers: [1], num_classes: 1.5 } }
fn main() {}
