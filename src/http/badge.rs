//! The view-count badge served at `/badge/{slug}.svg`: a flat, shields.io-style SVG reading
//! "views │ 1,234".
//!
//! Text is measured with the advances of Verdana 11px, the font shields.io measures in, so the
//! badge sits well beside other badges in a README. Each text also carries `textLength`, its
//! measured width, so a renderer that falls back to another font squeezes the text into its
//! box rather than overflowing it.

/// Largest label accepted, in characters.
pub(crate) const MAX_LABEL_CHARS: usize = 32;

/// Why a `?label=` was refused; the message is shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LabelError {
    #[error("label is empty")]
    Empty,
    #[error("label is longer than {MAX_LABEL_CHARS} characters")]
    TooLong,
    #[error("label may not hold control characters")]
    ControlCharacter,
}

/// A validated label: 1–32 characters, none of them a control character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Label(String);

impl Label {
    /// Checks a raw `?label=` value (already percent-decoded) and keeps it as given.
    pub(crate) fn parse(raw: &str) -> Result<Self, LabelError> {
        if raw.is_empty() {
            return Err(LabelError::Empty);
        }
        // `nth` stops after 33 characters, however long the query string is.
        if raw.chars().nth(MAX_LABEL_CHARS).is_some() {
            return Err(LabelError::TooLong);
        }
        // U+FFFE and U+FFFF are not controls, but XML forbids them just the same: letting
        // them through would make the badge ill-formed.
        let unprintable = |c: char| c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}');
        if raw.chars().any(unprintable) {
            return Err(LabelError::ControlCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The label as given, unescaped.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Label {
    fn default() -> Self {
        Self("views".to_owned())
    }
}

/// `1234567` → `"1,234,567"`.
pub(crate) fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// The badge: `<svg xmlns="http://www.w3.org/2000/svg" width=… height="20" role="img"
/// aria-label="LABEL: VALUE">…`, label on grey, count on blue.
pub(crate) fn render(label: &Label, views: u64) -> String {
    let value = group_thousands(views);
    let (label_text, value_text) = (text_width(label.as_str()), text_width(&value));
    let (label_box, value_box) = (label_text + PADDING, value_text + PADDING);
    let width = label_box + value_box;
    let label = escape(label.as_str());
    // Texts are drawn at 10× and scaled down by `.1`, as shields.io does, so every position
    // is a whole number in tenths of a pixel.
    let (label_x, value_x) = (label_box * 5, label_box * 10 + value_box * 5);
    let (label_len, value_len) = (label_text * 10, value_text * 10);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {value}\"><title>{label}: {value}</title>\
         <linearGradient id=\"s\" x2=\"0\" y2=\"100%\">\
         <stop offset=\"0\" stop-color=\"#bbb\" stop-opacity=\".1\"/>\
         <stop offset=\"1\" stop-opacity=\".1\"/></linearGradient>\
         <clipPath id=\"r\"><rect width=\"{width}\" height=\"20\" rx=\"3\" fill=\"#fff\"/></clipPath>\
         <g clip-path=\"url(#r)\"><rect width=\"{label_box}\" height=\"20\" fill=\"{LABEL_COLOUR}\"/>\
         <rect x=\"{label_box}\" width=\"{value_box}\" height=\"20\" fill=\"{VALUE_COLOUR}\"/>\
         <rect width=\"{width}\" height=\"20\" fill=\"url(#s)\"/></g>\
         <g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,sans-serif\" \
         text-rendering=\"geometricPrecision\" font-size=\"110\">\
         {label_shadow}{label_fill}{value_shadow}{value_fill}</g></svg>",
        label_shadow = text(label_x, label_len, &label, true),
        label_fill = text(label_x, label_len, &label, false),
        value_shadow = text(value_x, value_len, &value, true),
        value_fill = text(value_x, value_len, &value, false),
    )
}

const LABEL_COLOUR: &str = "#555";
const VALUE_COLOUR: &str = "#007ec6";
/// Space around a text in its box, 5 px a side, in whole pixels.
const PADDING: u32 = 10;

/// One text of the badge at 10× (see [`render`]); its shadow is the same text, a pixel lower,
/// dark and faint, and hidden from screen readers so the label is not read twice.
fn text(x: u32, length: u32, escaped: &str, shadow: bool) -> String {
    let (y, paint) = if shadow {
        (
            150,
            "aria-hidden=\"true\" fill=\"#010101\" fill-opacity=\".3\"",
        )
    } else {
        (140, "fill=\"#fff\"")
    };
    format!(
        "<text {paint} x=\"{x}\" y=\"{y}\" transform=\"scale(.1)\" textLength=\"{length}\">\
         {escaped}</text>"
    )
}

/// Width of `s` in Verdana 11px, rounded up to whole pixels.
fn text_width(s: &str) -> u32 {
    let hundredths: u32 = s.chars().map(char_width).sum();
    hundredths.div_ceil(100)
}

/// Advance of `c` in Verdana 11px, in hundredths of a pixel.
fn char_width(c: char) -> u32 {
    let ascii = (c as usize).checked_sub(32).and_then(|i| VERDANA_11.get(i));
    // Outside printable ASCII the font is unknown (a fallback draws CJK, say): a full em is
    // as wide as nearly any glyph, and `textLength` squeezes the rare wider one.
    ascii.map_or(1100, |&w| u32::from(w))
}

/// Advances of ASCII 32..=126 in Verdana 11px, in hundredths of a pixel, from the table
/// anafanafo publishes (MIT) and shields.io measures with.
#[rustfmt::skip]
const VERDANA_11: [u16; 95] = [
    387, 433, 505, 900, 699, 1184, 799, 295,   // space ! " # $ % & '
    500, 500, 699, 900, 400, 500, 400, 500,    // ( ) * + , - . /
    699, 699, 699, 699, 699, 699, 699, 699,    // 0 1 2 3 4 5 6 7
    699, 699, 500, 500, 900, 900, 900, 600,    // 8 9 : ; < = > ?
    1100, 752, 754, 768, 848, 696, 632, 853,   // @ A B C D E F G
    827, 463, 500, 762, 612, 927, 823, 866,    // H I J K L M N O
    663, 866, 765, 752, 678, 805, 752, 1088,   // P Q R S T U V W
    754, 677, 754, 500, 500, 500, 900, 699,    // X Y Z [ \ ] ^ _
    699, 661, 685, 573, 685, 655, 387, 685,    // ` a b c d e f g
    696, 302, 379, 651, 302, 1070, 696, 668,   // h i j k l m n o
    685, 685, 469, 573, 433, 696, 651, 900,    // p q r s t u v w
    651, 651, 578, 698, 500, 698, 900,         // x y z { | } ~
];

/// The label as XML text, fit for both element content and a quoted attribute.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVG_NS: &str = "http://www.w3.org/2000/svg";

    /// What a reader of the badge sees, read back through an XML parser.
    #[derive(Debug)]
    struct Badge {
        width: u32,
        boxes: Vec<u32>,
        /// The visible texts (label, value), each with its `textLength`; then their shadows.
        texts: Vec<(String, u32)>,
        shadows: Vec<(String, u32)>,
        title: String,
        aria_label: String,
    }

    fn read(svg: &str) -> Badge {
        let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.tag_name().namespace(), Some(SVG_NS));
        assert_eq!(root.attribute("height"), Some("20"));
        assert_eq!(root.attribute("role"), Some("img"));
        let number = |node: roxmltree::Node, name| -> u32 {
            node.attribute(name).expect(name).parse().expect(name)
        };
        let elements = |name: &'static str| {
            root.descendants().filter(move |n| {
                n.tag_name().name() == name && n.tag_name().namespace() == Some(SVG_NS)
            })
        };
        let text_of =
            |n: roxmltree::Node| (n.text().unwrap_or("").to_owned(), number(n, "textLength"));
        let (shadows, texts) =
            elements("text").partition::<Vec<_>, _>(|n| n.attribute("aria-hidden").is_some());
        Badge {
            width: number(root, "width"),
            // The two coloured halves: the rects in the clipped group that have a fill colour.
            boxes: elements("rect")
                .filter(|n| n.attribute("fill").is_some_and(|f| f.starts_with('#')))
                .filter(|n| {
                    n.parent()
                        .is_some_and(|p| p.attribute("clip-path").is_some())
                })
                .map(|n| number(n, "width"))
                .collect(),
            texts: texts.into_iter().map(text_of).collect(),
            shadows: shadows.into_iter().map(text_of).collect(),
            title: elements("title")
                .next()
                .and_then(|n| n.text())
                .unwrap_or("")
                .to_owned(),
            aria_label: root.attribute("aria-label").unwrap_or("").to_owned(),
        }
    }

    fn label(raw: &str) -> Label {
        Label::parse(raw).expect("valid label")
    }

    #[test]
    fn the_default_badge_reads_views_and_the_grouped_count() {
        let badge = read(&render(&Label::default(), 1234));
        let texts: Vec<_> = badge.texts.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["views", "1,234"]);
        assert_eq!(badge.shadows, badge.texts);
        assert_eq!(badge.title, "views: 1,234");
        assert_eq!(badge.aria_label, "views: 1,234");
    }

    #[test]
    fn a_hostile_label_comes_back_as_text_never_as_markup() {
        let raw = "<script>&\"'";
        let svg = render(&label(raw), 7);
        let badge = read(&svg);
        assert_eq!(badge.texts[0].0, raw);
        assert_eq!(badge.shadows[0].0, raw);
        assert_eq!(badge.title, format!("{raw}: 7"));
        assert_eq!(badge.aria_label, format!("{raw}: 7"));
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert!(!doc.descendants().any(|n| n.tag_name().name() == "script"));
    }

    #[test]
    fn non_ascii_labels_are_measured_wide_and_kept_intact() {
        for raw in ["Aufrufe", "閲覧数", "vues é"] {
            let badge = read(&render(&label(raw), 1));
            assert_eq!(badge.texts[0].0, raw);
        }
        // A character the table does not know is given a full em, 11 px.
        assert_eq!(text_width("閲覧数"), 33);
    }

    #[test]
    fn the_value_box_fits_the_largest_count_and_the_halves_add_up() {
        let badge = read(&render(&Label::default(), u64::MAX));
        assert_eq!(badge.texts[1].0, "18,446,744,073,709,551,615");
        let measured = text_width("18,446,744,073,709,551,615");
        assert_eq!(measured, 164, "20 digits at 6.99 px, 6 commas at 4 px");
        assert_eq!(badge.boxes.len(), 2);
        assert!(badge.boxes[1] >= measured + PADDING);
        assert_eq!(badge.width, badge.boxes[0] + badge.boxes[1]);
        // textLength is in tenths (the text is scaled by .1) and is the measured width.
        assert_eq!(badge.texts[1].1, measured * 10);
        assert_eq!(badge.texts[0].1, text_width("views") * 10);
    }

    #[test]
    fn each_extra_digit_widens_the_badge() {
        // 9, 99, …, nineteen 9s, then u64::MAX with twenty digits.
        let counts = (1..20).map(|k| 10u64.pow(k) - 1).chain([u64::MAX]);
        let widths: Vec<u32> = counts
            .map(|n| read(&render(&Label::default(), n)).width)
            .collect();
        assert!(widths.windows(2).all(|w| w[0] < w[1]), "{widths:?}");
    }

    #[test]
    fn every_text_is_centred_in_its_box() {
        let svg = render(&label("a rather long label"), 42);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let badge = read(&svg);
        let xs: Vec<u32> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "text" && n.attribute("aria-hidden").is_none())
            .filter_map(|n| n.attribute("x")?.parse().ok())
            .collect();
        let (left, right) = (badge.boxes[0] * 10, badge.boxes[1] * 10);
        assert_eq!(xs, [left / 2, left + right / 2]);
    }

    #[test]
    fn thousands_are_grouped_with_commas() {
        for (n, want) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_234_567, "1,234,567"),
            (u64::MAX, "18,446,744,073,709,551,615"),
        ] {
            assert_eq!(group_thousands(n), want);
        }
    }

    #[test]
    fn a_label_refuses_empty_too_long_and_control_characters() {
        let cases = [
            ("", LabelError::Empty),
            (
                &"x".repeat(MAX_LABEL_CHARS + 1) as &str,
                LabelError::TooLong,
            ),
            ("view\ns", LabelError::ControlCharacter),
            ("\t", LabelError::ControlCharacter),
            ("a\u{7f}", LabelError::ControlCharacter),
            ("a\u{85}", LabelError::ControlCharacter),
            ("a\u{FFFF}", LabelError::ControlCharacter),
        ];
        for (raw, want) in cases {
            assert_eq!(Label::parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn a_label_accepts_32_characters_and_non_ascii() {
        let longest = "é".repeat(MAX_LABEL_CHARS);
        let ascii = "x".repeat(MAX_LABEL_CHARS);
        for raw in [&longest as &str, &ascii, "Aufrufe", "閲覧数", "views"] {
            assert_eq!(label(raw).as_str(), raw);
        }
        assert_eq!(Label::default().as_str(), "views");
    }
}
