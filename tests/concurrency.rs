//! One compiled model shared by 8 threads, each running forward on its own inputs many
//! times, gives bit-identical results to sequential runs.

mod support;

use resnetc::jit_model::JitModel;
use resnetc::{from_spec, spec, weights};
use std::sync::Arc;

#[test]
fn eight_threads_share_one_model_bit_identically() {
    let s = spec::preset("resnet20").unwrap();
    let w = weights::seeded(&from_spec::build(&s).unwrap(), 3);
    // Two pool threads per forward, so concurrent callers also contend for the pool.
    let model = Arc::new(JitModel::new(&s, &w, 2).unwrap());
    let inputs: Vec<_> = (0..8).map(|i| weights::seeded_input(s.input, 1 + i % 3, 100 + i as u64)).collect();
    let sequential: Vec<_> = inputs.iter().map(|x| model.forward(x).unwrap()).collect();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (model, x, want) = (model.clone(), inputs[i].clone(), sequential[i].clone());
            std::thread::spawn(move || {
                for round in 0..25 {
                    let y = model.forward(&x).unwrap();
                    assert_eq!(
                        y.data(),
                        want.data(),
                        "thread {i} round {round}: result differs from the sequential run"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a worker thread panicked");
    }
}
