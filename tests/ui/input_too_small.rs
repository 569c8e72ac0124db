use resnetc_macros::resnet;
resnet! { pub struct Net { block: basic, layers: [1], stem: imagenet, stem_pool: caffe, input: [3, 1, 1] } }
fn main() {}
