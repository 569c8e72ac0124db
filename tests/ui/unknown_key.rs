use resnetc_macros::resnet;
resnet! { pub struct Net { block: basic, layers: [1], colour: 3 } }
fn main() {}
