//! Image input: PNG/JPEG decoding to 8-bit RGB, and the preprocessing that torchvision applies
//! to a PIL image, reproduced closely enough that resnetc sees the same input tensor as
//! PyTorch.
//!
//! ## Decoding
//! [`decode`] recognises the format by its magic bytes, never by the file extension. Every PNG
//! colour type and bit depth is accepted (palette and low bit depths are expanded, 16-bit
//! samples keep their high byte, alpha is dropped as PIL's `convert("RGB")` does); JPEG may be
//! grayscale, YCbCr/RGB or CMYK (converted to RGB with PIL's formula). Errors are one line and
//! start with the file name. Images over [`MAX_PIXELS`] are refused before any pixel buffer is
//! allocated.
//!
//! ## Preprocessing
//! [`imagenet_tensor`] is torchvision's standard ImageNet evaluation transform:
//! `Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(mean, std)`. The resize follows
//! Pillow's `Image.resize(size, BILINEAR)` (`libImaging/Resample.c`):
//!
//! * the filter is a triangle `max(0, 1 - |t|)` whose support is widened by the downscale
//!   factor `scale = in / out` (so downscaling is antialiased); output sample `i` is centred
//!   on `(i + 0.5) * scale` in input coordinates;
//! * the taps of output `i` are inputs `xmin..xmax` with `xmin = (int)(center - support + 0.5)`
//!   and `xmax = (int)(center + support + 0.5)` clamped to the image; input `x` gets weight
//!   `filter((x - center + 0.5) / max(scale, 1))`, weights are divided by their sum, then
//!   converted to fixed point with 22 fractional bits (rounded half away from zero);
//! * each output byte is `clamp((2^21 + sum(pixel * weight)) >> 22, 0, 255)`;
//! * the horizontal pass runs first and is stored as bytes, then the vertical pass; a pass is
//!   skipped when that dimension does not change.

use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::tensor::Tensor;

/// The largest image [`decode`] accepts, in pixels (100 megapixels).
pub const MAX_PIXELS: usize = 100_000_000;

/// ImageNet channel means used by torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations used by torchvision's pretrained models.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `R G B R G B ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

impl Rgb8 {
    /// An image from interleaved RGB bytes; panics if `pixels` has the wrong length.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Rgb8 {
        assert_eq!(pixels.len(), width * height * 3, "RGB buffer does not match {width}x{height}");
        Rgb8 { width, height, pixels }
    }

    /// The RGB value at column `x`, row `y`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    fn check(&self) {
        assert_eq!(
            self.pixels.len(),
            self.width * self.height * 3,
            "RGB buffer does not match {}x{}",
            self.width,
            self.height
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];

/// Reads and decodes the PNG or JPEG file at `path` (format chosen by content).
pub fn decode(path: &Path) -> Result<Rgb8> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
    if meta.is_dir() {
        bail!("{name}: is a directory, not an image file");
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
    decode_bytes(&name, &bytes)
}

/// Decodes PNG or JPEG bytes; `name` (usually the file name) starts every error message.
pub fn decode_bytes(name: &str, bytes: &[u8]) -> Result<Rgb8> {
    if bytes.is_empty() {
        bail!("{name}: empty file, not an image");
    }
    let decoded = if bytes.starts_with(PNG_MAGIC) {
        guarded("PNG", || decode_png(bytes))
    } else if bytes.starts_with(JPEG_MAGIC) {
        guarded("JPEG", || decode_jpeg(bytes))
    } else {
        bail!("{name}: not a PNG or JPEG image");
    };
    decoded.map_err(|msg| anyhow!("{name}: {}", one_line(&msg)))
}

/// Runs a decoder, turning a panic inside a third-party decoder into an error.
fn guarded(format: &str, f: impl FnOnce() -> Result<Rgb8, String>) -> Result<Rgb8, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(format!("corrupt {format}: the decoder failed on this file")))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_size(width: usize, height: usize) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width}x{height})"));
    }
    match width.checked_mul(height) {
        Some(n) if n <= MAX_PIXELS => Ok(()),
        _ => Err(format!(
            "image is {width}x{height} ({:.1} megapixels), over the limit of {} megapixels",
            width as f64 * height as f64 / 1e6,
            MAX_PIXELS / 1_000_000
        )),
    }
}

fn decode_png(bytes: &[u8]) -> Result<Rgb8, String> {
    use png::{BitDepth, ColorType, DecodingError, Transformations};
    let err = |e: DecodingError| match e {
        DecodingError::LimitsExceeded => "PNG exceeds the decoder's memory limits".to_string(),
        DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "corrupt PNG: file is truncated".to_string()
        }
        e => format!("corrupt PNG: {e}"),
    };
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let header = decoder.read_header_info().map_err(err)?;
    check_size(header.width as usize, header.height as usize)?;
    let mut reader = decoder.read_info().map_err(err)?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(err)?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    check_size(width, height)?;
    if frame.bit_depth != BitDepth::Eight {
        return Err(format!("unsupported PNG: {:?} output after expansion", frame.bit_depth));
    }
    let channels = match frame.color_type {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => return Err("unsupported PNG: palette was not expanded".into()),
    };
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let row = y
            .checked_mul(frame.line_size)
            .and_then(|start| buf.get(start..start + width * channels))
            .ok_or("corrupt PNG: decoder returned a short image")?;
        for px in row.chunks_exact(channels) {
            if channels < 3 {
                pixels.extend_from_slice(&[px[0], px[0], px[0]]);
            } else {
                pixels.extend_from_slice(&px[..3]);
            }
        }
    }
    Ok(Rgb8 { width, height, pixels })
}

fn decode_jpeg(bytes: &[u8]) -> Result<Rgb8, String> {
    use jpeg_decoder::{Error, PixelFormat};
    let err = |e: Error| match e {
        Error::Format(msg) => format!("corrupt JPEG: {msg}"),
        Error::Unsupported(feature) => format!("unsupported JPEG: {feature:?}"),
        Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "corrupt JPEG: file is truncated".to_string(),
        e => format!("corrupt JPEG: {e}"),
    };
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(err)?;
    let info = decoder.info().ok_or("corrupt JPEG: no frame header")?;
    check_size(info.width as usize, info.height as usize)?;
    let data = decoder.decode().map_err(err)?;
    let info = decoder.info().ok_or("corrupt JPEG: no frame header")?;
    let (width, height) = (info.width as usize, info.height as usize);
    check_size(width, height)?;
    let n = width * height;
    if data.len() < n * info.pixel_format.pixel_bytes() {
        return Err("corrupt JPEG: decoder returned a short image".into());
    }
    let mut pixels = Vec::with_capacity(n * 3);
    match info.pixel_format {
        PixelFormat::L8 => {
            for &l in &data[..n] {
                pixels.extend_from_slice(&[l, l, l]);
            }
        }
        PixelFormat::L16 => {
            // Native-endian samples of `precision` bits (lossless JPEG): keep the top 8 bits.
            let shift = jpeg_precision(bytes).unwrap_or(16).clamp(8, 16) - 8;
            for s in data[..2 * n].chunks_exact(2) {
                let l = (u16::from_ne_bytes([s[0], s[1]]) >> shift).min(255) as u8;
                pixels.extend_from_slice(&[l, l, l]);
            }
        }
        PixelFormat::RGB24 => pixels.extend_from_slice(&data[..3 * n]),
        PixelFormat::CMYK32 => {
            // jpeg-decoder yields ink amounts (0 = no ink); PIL's cmyk2rgb:
            // channel = (255 - K) - (ink * (255 - K)) / 255, with its rounded division by 255.
            for px in data[..4 * n].chunks_exact(4) {
                let nk = 255 - px[3] as u32;
                for &ink in &px[..3] {
                    pixels.push((nk - muldiv255(ink as u32, nk)) as u8);
                }
            }
        }
    }
    Ok(Rgb8 { width, height, pixels })
}

/// `round(a * b / 255)` for bytes, as Pillow computes it.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// The sample precision in bits from a JPEG's frame header (SOFn), if one can be found.
fn jpeg_precision(bytes: &[u8]) -> Option<u8> {
    let mut i = 2;
    while i + 4 < bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        let is_sof = (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker);
        if is_sof {
            return bytes.get(i + 4).copied();
        }
        i += 2 + len;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Resizing (Pillow's BILINEAR resample) and cropping (torchvision's CenterCrop)
// ---------------------------------------------------------------------------------------------

/// Fractional bits of Pillow's fixed-point resampling weights.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resampling weights from `in_size` samples to `out_size` samples along one axis.
struct Coeffs {
    /// Per output sample: first input sample and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Per output sample, `ksize` fixed-point weights (only the first `taps` are used).
    weights: Vec<i32>,
    ksize: usize,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 1.0; // bilinear
                              // Pillow passes the box edges as C floats: `in1 - in0` is a float subtraction.
    let scale = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; negative values clamp to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize;
        let taps = (xmax - xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(taps) {
            let w = triangle(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, out) in row.iter_mut().enumerate().take(taps) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            *out = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, taps));
    }
    Coeffs { bounds, weights, ksize }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples `rows` of `src` (width `in_w`) horizontally to `out_w` columns.
fn resample_horizontal(src: &[u8], in_w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = Vec::with_capacity(rows.len() * out_w * 3);
    for y in rows {
        let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (xx, &(xmin, taps)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + taps];
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (x, &w) in k.iter().enumerate() {
                let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for ch in 0..3 {
                    acc[ch] += p[ch] as i64 * w as i64;
                }
            }
            out.extend(acc.map(clip8));
        }
    }
    out
}

/// Resamples `src` (width `w`, whose row 0 is input row `first_row`) vertically.
fn resample_vertical(src: &[u8], w: usize, first_row: usize, c: &Coeffs) -> Vec<u8> {
    let stride = w * 3;
    let mut out = Vec::with_capacity(c.bounds.len() * stride);
    for (yy, &(ymin, taps)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + taps];
        for i in 0..stride {
            let mut acc = 1i64 << (PRECISION_BITS - 1);
            for (y, &wt) in k.iter().enumerate() {
                acc += src[(ymin - first_row + y) * stride + i] as i64 * wt as i64;
            }
            out.push(clip8(acc));
        }
    }
    out
}

/// Resizes to exactly `width` x `height` like Pillow's `Image.resize(size, Image.BILINEAR)`
/// (antialiased when downscaling). Panics on an empty image or a zero target size.
pub fn resize_bilinear(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    img.check();
    assert!(img.width > 0 && img.height > 0, "cannot resize an empty image");
    assert!(width > 0 && height > 0, "cannot resize to an empty image");
    let need_h = width != img.width;
    let need_v = height != img.height;
    let coeffs_v = precompute_coeffs(img.height, height);
    // Rows of the input that the vertical pass reads; Pillow only resamples those horizontally.
    let (first, last) = if need_v {
        let (lo, _) = coeffs_v.bounds[0];
        let (hi, taps) = coeffs_v.bounds[height - 1];
        (lo, hi + taps)
    } else {
        (0, img.height)
    };
    let (tmp, tmp_first) = if need_h {
        let coeffs_h = precompute_coeffs(img.width, width);
        (resample_horizontal(&img.pixels, img.width, first..last, &coeffs_h), first)
    } else {
        (img.pixels.clone(), 0)
    };
    let pixels = if need_v { resample_vertical(&tmp, width, tmp_first, &coeffs_v) } else { tmp };
    Rgb8 { width, height, pixels }
}

/// The `(width, height)` torchvision's `Resize(size)` (an int) gives an image: the shorter side
/// becomes `size`, the longer `int(size * long / short)`.
pub fn shorter_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    // Python's `size * long / short`: exact integer product, then a correctly rounded division.
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `Resize(size)` on a PIL image: shorter side to `size`, bilinear, antialiased.
pub fn resize_shorter_side(img: &Rgb8, size: usize) -> Rgb8 {
    let (w, h) = shorter_side_size(img.width, img.height, size);
    if (w, h) == (img.width, img.height) {
        return img.clone();
    }
    resize_bilinear(img, w, h)
}

/// Python's `int(round(n / 2.0))` for `n >= 0`: halves round to even.
fn half_round_even(n: usize) -> usize {
    let q = n / 2;
    if n % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// Offset of a centred window of `crop` samples in `size` samples, as torchvision's
/// `center_crop` computes it: negative when the image is zero-padded instead.
fn crop_offset(size: usize, crop: usize) -> isize {
    if crop > size {
        -(((crop - size) / 2) as isize)
    } else {
        half_round_even(size - crop) as isize
    }
}

/// torchvision's `CenterCrop((height, width))`: the window starts at
/// `int(round((size - crop) / 2.0))`; a crop larger than the image pads it with black.
pub fn center_crop(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    img.check();
    let left = crop_offset(img.width, width);
    let top = crop_offset(img.height, height);
    let mut pixels = vec![0u8; width * height * 3];
    for y in 0..height {
        let sy = y as isize + top;
        if sy < 0 || sy >= img.height as isize {
            continue;
        }
        for x in 0..width {
            let sx = x as isize + left;
            if sx < 0 || sx >= img.width as isize {
                continue;
            }
            let s = (sy as usize * img.width + sx as usize) * 3;
            pixels[(y * width + x) * 3..][..3].copy_from_slice(&img.pixels[s..s + 3]);
        }
    }
    Rgb8 { width, height, pixels }
}

/// torchvision's `Resize(resize)` followed by `CenterCrop(crop)`.
pub fn resize_center_crop(img: &Rgb8, resize: usize, crop: usize) -> Rgb8 {
    center_crop(&resize_shorter_side(img, resize), crop, crop)
}

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

/// Pillow's RGB -> L conversion (ITU-R 601-2 luma), in its 16-bit fixed point with rounding.
pub fn luma(rgb: [u8; 3]) -> u8 {
    ((rgb[0] as u32 * 19595 + rgb[1] as u32 * 38470 + rgb[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `ToTensor()` then `Normalize(mean, std)`: a `[1, channels, height, width]` tensor of
/// `(byte / 255 - mean[c]) / std[c]` in f32 like PyTorch. `channels` is 3 (RGB) or 1 (gray, via
/// Pillow's `convert("L")`, see [`luma`]). `mean` and `std` hold one value per channel or a
/// single value for all. Panics on other channel counts or mismatched `mean`/`std` lengths.
pub fn to_tensor(img: &Rgb8, channels: usize, mean: &[f32], std: &[f32]) -> Tensor {
    img.check();
    assert!(channels == 1 || channels == 3, "to_tensor: channels must be 1 or 3, not {channels}");
    for (what, v) in [("mean", mean), ("std", std)] {
        assert!(
            v.len() == channels || v.len() == 1,
            "to_tensor: {what} has {} values for {channels} channels",
            v.len()
        );
    }
    let plane = img.width * img.height;
    let mut data = vec![0f32; channels * plane];
    for c in 0..channels {
        let m = mean[c.min(mean.len() - 1)];
        let s = std[c.min(std.len() - 1)];
        let out = &mut data[c * plane..(c + 1) * plane];
        for (i, px) in img.pixels.chunks_exact(3).enumerate() {
            let byte = if channels == 1 { luma([px[0], px[1], px[2]]) } else { px[c] };
            out[i] = (byte as f32 / 255.0 - m) / s;
        }
    }
    Tensor::new(vec![1, channels, img.height, img.width], data)
}

/// [`to_tensor`] for a model that expects `height` x `width` inputs, without resizing: an image
/// of any other size is an error.
pub fn to_tensor_sized(
    img: &Rgb8,
    channels: usize,
    height: usize,
    width: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<Tensor> {
    if (img.width, img.height) != (width, height) {
        bail!(
            "image is {}x{} (width x height) but the model expects {width}x{height}, and resizing \
             was not requested",
            img.width,
            img.height
        );
    }
    Ok(to_tensor(img, channels, mean, std))
}

/// torchvision's ImageNet evaluation preprocessing: `Resize(256)`, `CenterCrop(224)`,
/// `ToTensor()`, `Normalize(IMAGENET_MEAN, IMAGENET_STD)`; shape `[1, 3, 224, 224]`.
pub fn imagenet_tensor(img: &Rgb8) -> Tensor {
    to_tensor(&resize_center_crop(img, 256, 224), 3, &IMAGENET_MEAN, &IMAGENET_STD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        palette: Option<(&[u8], &[u8])>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(color);
            enc.set_depth(depth);
            if let Some((plte, trns)) = palette {
                enc.set_palette(plte.to_vec());
                enc.set_trns(trns.to_vec());
            }
            let mut writer = enc.write_header().unwrap();
            writer.write_image_data(data).unwrap();
        }
        out
    }

    fn err(name: &str, bytes: &[u8]) -> String {
        format!("{:#}", decode_bytes(name, bytes).unwrap_err())
    }

    /// An image whose pixel (x, y) is (x, y, (x * 7 + y * 13) % 256).
    fn coords(width: usize, height: usize) -> Rgb8 {
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                pixels.extend_from_slice(&[x as u8, y as u8, ((x * 7 + y * 13) % 256) as u8]);
            }
        }
        Rgb8::new(width, height, pixels)
    }

    #[test]
    fn decodes_gray_png() {
        use png::{BitDepth, ColorType};
        let bytes = encode_png(2, 2, ColorType::Grayscale, BitDepth::Eight, &[0, 50, 200, 255], None);
        let img = decode_bytes("g.png", &bytes).unwrap();
        assert_eq!((img.width, img.height), (2, 2));
        assert_eq!(img.pixels, [0, 0, 0, 50, 50, 50, 200, 200, 200, 255, 255, 255]);
        // 1-bit gray expands to 0 / 255.
        let bytes = encode_png(3, 1, ColorType::Grayscale, BitDepth::One, &[0b1010_0000], None);
        assert_eq!(decode_bytes("g1.png", &bytes).unwrap().pixels, [255, 255, 255, 0, 0, 0, 255, 255, 255]);
        // Gray + alpha: alpha dropped.
        let bytes = encode_png(1, 1, ColorType::GrayscaleAlpha, BitDepth::Eight, &[7, 9], None);
        assert_eq!(decode_bytes("ga.png", &bytes).unwrap().pixels, [7, 7, 7]);
    }

    #[test]
    fn decodes_rgb_rgba_and_16bit_png() {
        use png::{BitDepth, ColorType};
        let rgb = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let bytes = encode_png(2, 2, ColorType::Rgb, BitDepth::Eight, &rgb, None);
        let img = decode_bytes("c.png", &bytes).unwrap();
        assert_eq!((img.width, img.height, img.pixels.as_slice()), (2, 2, &rgb[..]));

        let rgba = [10, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255];
        let bytes = encode_png(3, 1, ColorType::Rgba, BitDepth::Eight, &rgba, None);
        let img = decode_bytes("a.png", &bytes).unwrap();
        assert_eq!((img.width, img.height), (3, 1));
        assert_eq!(img.pixels, [10, 20, 30, 40, 50, 60, 70, 80, 90]);

        // 16-bit big-endian samples keep their high byte.
        let rgb16 = [0x12, 0x34, 0xAB, 0xCD, 0xFF, 0xFF];
        let bytes = encode_png(1, 1, ColorType::Rgb, BitDepth::Sixteen, &rgb16, None);
        assert_eq!(decode_bytes("d.png", &bytes).unwrap().pixels, [0x12, 0xAB, 0xFF]);
    }

    #[test]
    fn decodes_palette_png() {
        use png::{BitDepth, ColorType};
        let plte = [255, 0, 0, 0, 255, 0, 0, 0, 255];
        let trns = [255, 0, 128]; // transparency is ignored, like convert("RGB")
                                  // 2-bit indices 2, 0, 1, 2 packed into one byte.
        let bytes = encode_png(4, 1, ColorType::Indexed, BitDepth::Two, &[0b10_00_01_10], Some((&plte, &trns)));
        let img = decode_bytes("p.png", &bytes).unwrap();
        assert_eq!(img.pixels, [0, 0, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255]);
    }

    #[test]
    fn rejects_bad_files_with_one_line_errors() {
        assert_eq!(err("photo.jpg", b"hello, world"), "photo.jpg: not a PNG or JPEG image");
        assert_eq!(err("e.png", b""), "e.png: empty file, not an image");
        let good = encode_png(8, 8, png::ColorType::Rgb, png::BitDepth::Eight, &[9; 192], None);
        assert!(decode_bytes("ok.png", &good).is_ok());
        for cut in [10, 30, good.len() / 2, good.len() - 13] {
            let e = err("x.png", &good[..cut]);
            assert!(e.starts_with("x.png: corrupt PNG: "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let mut bad_crc = good.clone();
        bad_crc[30] ^= 0xFF; // IHDR checksum
        assert!(err("y.png", &bad_crc).starts_with("y.png: corrupt PNG: "));
        let e = err("t.jpg", &[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F']);
        assert!(e.starts_with("t.jpg: corrupt JPEG: "), "{e}");
        let e = err("u.jpg", &[0xFF, 0xD8, 0xFF, 0x00, 0x12, 0x34, 0x56]);
        assert!(e.starts_with("u.jpg: corrupt JPEG: ") || e.starts_with("u.jpg: unsupported JPEG"), "{e}");
    }

    #[test]
    fn rejects_huge_images_before_decoding() {
        // A PNG header claiming 20000 x 20000 pixels, with no image data.
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 20000, 20000);
            enc.set_color(png::ColorType::Rgb);
            let _ = enc.write_header().unwrap();
        }
        let e = err("big.png", &out);
        assert!(e.starts_with("big.png: image is 20000x20000 (400.0 megapixels), over the limit"), "{e}");
    }

    #[test]
    fn decode_reports_path_problems() {
        let dir = std::env::temp_dir();
        let e = format!("{:#}", decode(&dir).unwrap_err());
        assert_eq!(e, format!("{}: is a directory, not an image file", dir.display()));
        let missing = dir.join("resnetc-no-such-image-4711.png");
        let e = format!("{:#}", decode(&missing).unwrap_err());
        assert!(e.starts_with(&format!("{}: cannot read: ", missing.display())), "{e}");
    }

    #[test]
    fn decodes_example_jpeg() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/images/chelsea.jpg");
        let img = decode(&path).unwrap();
        assert_eq!((img.width, img.height), (451, 300));
        // A truncated JPEG must fail cleanly or decode partially, never panic.
        let bytes = std::fs::read(&path).unwrap();
        for cut in [3, 20, 200, bytes.len() / 2] {
            if let Err(e) = decode_bytes("cut.jpg", &bytes[..cut]) {
                assert!(format!("{e:#}").starts_with("cut.jpg: "));
            }
        }
    }

    #[test]
    fn resizing_a_constant_image_keeps_it_constant() {
        let img = Rgb8::new(37, 23, [10u8, 200, 77].repeat(37 * 23));
        for (w, h) in [(5, 3), (11, 23), (37, 9), (80, 50), (256, 256)] {
            let out = resize_bilinear(&img, w, h);
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.pixels.chunks(3).all(|p| p == [10, 200, 77]), "{w}x{h}");
        }
    }

    #[test]
    fn resize_matches_pillow_on_small_cases() {
        // Expected values are what Pillow 13's Image.resize(..., BILINEAR) returns.
        let img = Rgb8::new(4, 1, [0u8, 100, 200, 50].iter().flat_map(|&v| [v, v, v]).collect());
        let out = resize_bilinear(&img, 2, 1);
        assert_eq!(out.pixels, [71, 71, 71, 121, 121, 121]);

        let mut px = Vec::new();
        for y in 0..5usize {
            for x in 0..7usize {
                px.extend_from_slice(&[
                    ((x * 37 + y * 91) % 256) as u8,
                    ((x * 13 + y * 200) % 256) as u8,
                    ((x * x * 11 + y * 7) % 256) as u8,
                ]);
            }
        }
        let img = Rgb8::new(7, 5, px);
        let down = resize_bilinear(&img, 3, 2);
        assert_eq!(down.pixels, [99, 130, 21, 129, 151, 101, 129, 103, 103, 106, 99, 35, 118, 126, 115, 128, 146, 117]);
        let up = resize_bilinear(&img, 10, 8);
        assert_eq!(up.pixel(0, 0), [0, 0, 0]);
        assert_eq!(up.pixel(9, 0), [222, 78, 140]);
        assert_eq!(up.pixel(3, 2), [154, 222, 49]);
        assert_eq!(up.pixel(6, 7), [2, 85, 196]);
        assert_eq!(up.pixel(9, 7), [74, 110, 168]);
        assert_eq!(up.pixel(5, 4), [78, 171, 142]);
    }

    #[test]
    fn shorter_side_sizes_follow_torchvision() {
        assert_eq!(shorter_side_size(451, 300, 256), (384, 256));
        assert_eq!(shorter_side_size(300, 451, 256), (256, 384));
        assert_eq!(shorter_side_size(512, 512, 256), (256, 256));
        assert_eq!(shorter_side_size(400, 300, 256), (341, 256)); // 341.33 truncates
        assert_eq!(shorter_side_size(3, 700, 256), (256, 59733));
    }

    #[test]
    fn center_crop_offsets_follow_torchvision() {
        // (341 - 224) / 2 = 58.5 rounds to even (58); (256 - 224) / 2 = 16.
        let out = center_crop(&coords(341, 256), 224, 224);
        assert_eq!(out.pixel(0, 0), [58, 16, ((58 * 7 + 16 * 13) % 256) as u8]);
        assert_eq!(out.pixel(223, 223)[..2], [(58 + 223) as u8, (16 + 223) as u8]);
        // 1.5 rounds to 2, 0.5 to 0, 2.5 to 2.
        assert_eq!(center_crop(&coords(7, 6), 4, 5).pixel(0, 0)[..2], [2, 0]);
        assert_eq!(center_crop(&coords(9, 5), 4, 5).pixel(0, 0)[..2], [2, 0]);
        // A crop larger than the image pads with black: left (6 - 3) // 2 = 1, top 0.
        let out = center_crop(&coords(3, 2), 6, 2);
        assert_eq!(out.pixel(0, 0), [0, 0, 0]);
        assert_eq!(out.pixel(1, 1)[..2], [0, 1]);
        assert_eq!(out.pixel(3, 0)[..2], [2, 0]);
        assert_eq!(out.pixel(4, 1), [0, 0, 0]);
    }

    #[test]
    fn imagenet_tensor_has_the_right_shape_and_values() {
        let img = Rgb8::new(451, 300, [255u8, 0, 128].repeat(451 * 300));
        let t = imagenet_tensor(&img);
        assert_eq!(t.shape(), [1, 3, 224, 224]);
        let plane = 224 * 224;
        let expect = [(1.0f32 - 0.485) / 0.229, (0.0f32 - 0.456) / 0.224, (128.0f32 / 255.0 - 0.406) / 0.225];
        for (c, e) in expect.iter().enumerate() {
            assert!(t.data()[c * plane..(c + 1) * plane].iter().all(|v| v == e), "channel {c}");
        }
    }

    #[test]
    fn gray_tensor_uses_pillow_luma() {
        // Pillow's convert("L") gives 76, 150, 29, 124, 1, 1, 62 for these pixels.
        let img = Rgb8::new(7, 1, vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 200, 33, 1, 1, 0, 0, 0, 5, 100, 50, 25]);
        let t = to_tensor_sized(&img, 1, 1, 7, &[0.0], &[1.0]).unwrap();
        assert_eq!(t.shape(), [1, 1, 1, 7]);
        let bytes: Vec<u8> = t.data().iter().map(|v| (v * 255.0).round() as u8).collect();
        assert_eq!(bytes, [76, 150, 29, 124, 1, 1, 62]);

        let e = to_tensor_sized(&img, 1, 28, 28, &[0.5], &[0.5]).unwrap_err().to_string();
        assert_eq!(e, "image is 7x1 (width x height) but the model expects 28x28, and resizing was not requested");
    }
}
