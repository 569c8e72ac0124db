//! `resnet!`: declares a residual network and expands, in your crate, to a model type whose
//! kernels are specialized for exactly that depth and shape (Rust with `std::arch` SIMD:
//! AVX-512, AVX2+FMA or portable, chosen at run time). The generated code needs the
//! `resnetc-runtime` crate as a dependency.
//!
//! ```ignore
//! use resnetc_macros::resnet;
//!
//! // A preset: resnet18/34/50/101/152, wide_resnet50_2, resnext50_32x4d, resnet20, ...
//! resnet! { pub struct Resnet50 = resnet50; }
//!
//! // A full description; keys and values as in resnetc's TOML specs.
//! resnet! {
//!     pub struct FashionNet {
//!         block: basic,              // basic | bottleneck
//!         layers: [3, 3, 3],         // blocks per stage
//!         widths: [16, 32, 64],      // optional
//!         stem: cifar,               // imagenet | cifar
//!         // stem_width: 16, stem_pool: torchvision | caffe,
//!         // groups: 32, width_per_group: 4, stride_in: "1x1" | "3x3",
//!         num_classes: 10,
//!         input: [1, 28, 28],
//!     }
//! }
//!
//! let model = FashionNet::load("model.safetensors")?.with_threads(2);
//! let logits = model.forward(&input)?; // input: resnetc_runtime::Tensor [N, 1, 28, 28]
//! ```
//!
//! The type has `load(path)`, `from_safetensors(&[u8])`, `from_tensors`, a batch-aware
//! `forward` and an allocation-free `forward_into`, `set_threads`/`with_threads`; it is
//! `Send + Sync`. Mistakes are compile errors pointing at the offending token.

use proc_macro::TokenStream;
use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::{braced, bracketed, Ident, LitInt, LitStr, Token, Visibility};

/// A value in a description.
enum Value {
    Word(Ident),
    Text(LitStr),
    Int(i64, Span),
    List(Vec<(i64, Span)>, Span),
}

impl Value {
    fn span(&self) -> Span {
        match self {
            Value::Word(i) => i.span(),
            Value::Text(s) => s.span(),
            Value::Int(_, s) | Value::List(_, s) => *s,
        }
    }

    fn toml(&self) -> String {
        match self {
            Value::Word(i) => format!("\"{i}\""),
            Value::Text(s) => format!("{:?}", s.value()),
            Value::Int(v, _) => v.to_string(),
            Value::List(items, _) => {
                format!("[{}]", items.iter().map(|(v, _)| v.to_string()).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

fn int(input: ParseStream) -> syn::Result<(i64, Span)> {
    let neg = input.parse::<Option<Token![-]>>()?.is_some();
    let lit: LitInt = input.parse()?;
    let v: i64 = lit.base10_parse()?;
    Ok((if neg { -v } else { v }, lit.span()))
}

impl Parse for Value {
    fn parse(input: ParseStream) -> syn::Result<Value> {
        if input.peek(syn::token::Bracket) {
            let content;
            let b = bracketed!(content in input);
            let items = content.parse_terminated(int, Token![,])?;
            return Ok(Value::List(items.into_iter().collect(), b.span.join()));
        }
        if input.peek(LitStr) {
            return Ok(Value::Text(input.parse()?));
        }
        if input.peek(Ident) {
            return Ok(Value::Word(input.parse()?));
        }
        if input.peek(LitInt) || input.peek(Token![-]) {
            let (v, s) = int(input)?;
            return Ok(Value::Int(v, s));
        }
        Err(input.error("expected a value: a word (basic, cifar, ...), a string, an integer or a list of integers"))
    }
}

enum Body {
    Preset(Ident),
    Keys(Vec<(Ident, Value)>, Span),
}

struct Model {
    vis: Visibility,
    name: Ident,
    body: Body,
}

impl Parse for Model {
    fn parse(input: ParseStream) -> syn::Result<Model> {
        let _ = input.call(syn::Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        input.parse::<Token![struct]>()?;
        let name: Ident = input.parse()?;
        let body = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            let preset: Ident = input.parse()?;
            input.parse::<Option<Token![;]>>()?;
            Body::Preset(preset)
        } else {
            let content;
            let b = braced!(content in input);
            let mut keys = vec![];
            while !content.is_empty() {
                let key: Ident = content.parse()?;
                content.parse::<Token![:]>()?;
                let value: Value = content.parse()?;
                keys.push((key, value));
                if content.is_empty() {
                    break;
                }
                content.parse::<Token![,]>()?;
            }
            Body::Keys(keys, b.span.join())
        };
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the model description"));
        }
        Ok(Model { vis, name, body })
    }
}

/// The span an error message from the spec validator belongs to: the key (or its value)
/// the message names, else the whole description.
fn blame(msg: &str, keys: &[(Ident, Value)], whole: Span) -> Span {
    for (k, v) in keys {
        let key = k.to_string();
        if msg.contains(&format!("unknown key `{key}`")) {
            return k.span();
        }
        if msg.contains(&format!("key `{key}`")) {
            return v.span();
        }
    }
    if msg.contains("too small") || msg.contains("too large") {
        if let Some((_, v)) = keys.iter().find(|(k, _)| k == "input") {
            return v.span();
        }
    }
    whole
}

fn expand(m: Model) -> syn::Result<proc_macro2::TokenStream> {
    let type_name = m.name.to_string();
    let (spec, span, keys) = match &m.body {
        Body::Preset(p) => {
            let spec = resnetc::spec::preset(&p.to_string()).ok_or_else(|| {
                syn::Error::new(
                    p.span(),
                    format!("unknown preset `{p}` (presets: {})", resnetc::spec::PRESETS.join(", ")),
                )
            })?;
            (spec, p.span(), vec![])
        }
        Body::Keys(keys, whole) => {
            let text: String = keys.iter().map(|(k, v)| format!("{k} = {}\n", v.toml())).collect();
            let spec = resnetc::spec::parse(&text, &type_name.to_ascii_lowercase())
                .map_err(|e| syn::Error::new(blame(&format!("{e:#}"), keys, *whole), format!("{e:#}")))?;
            (spec, *whole, keys.iter().map(|(k, v)| (k.clone(), v.span())).collect())
        }
    };
    let vis_text = match &m.vis {
        Visibility::Public(_) => "pub".to_string(),
        Visibility::Restricted(_) => "pub(crate)".to_string(),
        Visibility::Inherited => String::new(),
    };
    let code = resnetc::rustgen::generate(&spec, &type_name, &vis_text, "::resnetc_runtime").map_err(|e| {
        let msg = format!("{e:#}");
        let at = keys
            .iter()
            .find(|(k, _)| k == "input" && (msg.contains("too small") || msg.contains("too large")))
            .map_or(span, |(_, s)| *s);
        syn::Error::new(at, msg)
    })?;
    code.parse().map_err(|e| syn::Error::new(span, format!("resnetc generated invalid Rust (a bug): {e}")))
}

/// Declares a residual network; see the crate documentation.
#[proc_macro]
pub fn resnet(input: TokenStream) -> TokenStream {
    let model = syn::parse_macro_input!(input as Model);
    match expand(model) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
