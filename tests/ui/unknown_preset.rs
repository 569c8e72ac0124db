use resnetc_macros::resnet;
resnet! { pub struct Net = resnet9000; }
fn main() {}
