//! The PDF rendering: A4 pages laid out here, text in DejaVu Sans embedded
//! from the binary (`assets/fonts`), subset to the glyphs used, with a
//! ToUnicode map so the text can be extracted and searched.
//!
//! Layout first places every run of text and every rule on pages (the
//! table breaks between rows and repeats its heading), then the fonts are
//! subset to exactly the glyphs placed and the pages are written. Nothing
//! depends on the time or on chance: no creation date but the invoice's own
//! issue instant, fixed subset tags, objects numbered in order.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};

use pdf_writer::Filter;
use pdf_writer::types::{CidFontType, FontFlags, SystemInfo};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use subsetter::GlyphRemapper;

use super::{InvoiceStatement, Party};

const REGULAR_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const BOLD_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");

/// A4 in points.
const PAGE_WIDTH: f32 = 595.28;
const PAGE_HEIGHT: f32 = 841.89;
const MARGIN: f32 = 50.0;
const RIGHT: f32 = PAGE_WIDTH - MARGIN;
/// Rows stop above this line; the footer sits below it.
const BOTTOM: f32 = 72.0;
const TOP: f32 = PAGE_HEIGHT - MARGIN;

const BODY: f32 = 9.5;
const SMALL: f32 = 8.0;
const LEADING: f32 = 13.0;

/// Table columns: description from the margin, quantity, amount flush right.
const QUANTITY_X: f32 = 330.0;
const DESCRIPTION_WIDTH: f32 = QUANTITY_X - MARGIN - 12.0;
const QUANTITY_WIDTH: f32 = 115.0;
const FACTS_X: f32 = 330.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Regular,
    Bold,
}

struct Font {
    data: &'static [u8],
    face: ttf_parser::Face<'static>,
    units_per_em: f32,
}

impl Font {
    fn load(data: &'static [u8]) -> Font {
        // The fonts are part of the binary; a font that fails to parse is a
        // build defect, found by every test that renders a PDF.
        #[allow(clippy::expect_used)]
        let face = ttf_parser::Face::parse(data, 0).expect("embedded font parses");
        Font {
            data,
            units_per_em: f32::from(face.units_per_em()),
            face,
        }
    }

    fn glyph(&self, c: char) -> u16 {
        self.face.glyph_index(c).map_or(0, |g| g.0)
    }

    fn advance(&self, glyph: u16) -> f32 {
        f32::from(
            self.face
                .glyph_hor_advance(ttf_parser::GlyphId(glyph))
                .unwrap_or(0),
        )
    }

    /// The width of `text` at `size` points.
    fn width(&self, text: &str, size: f32) -> f32 {
        text.chars()
            .map(|c| self.advance(self.glyph(c)))
            .sum::<f32>()
            * size
            / self.units_per_em
    }

    fn scaled(&self, units: i16) -> f32 {
        f32::from(units) * 1000.0 / self.units_per_em
    }
}

static FONTS: LazyLock<[Font; 2]> =
    LazyLock::new(|| [Font::load(REGULAR_TTF), Font::load(BOLD_TTF)]);

fn font(style: Style) -> &'static Font {
    match style {
        Style::Regular => &FONTS[0],
        Style::Bold => &FONTS[1],
    }
}

/// A run of text placed on a page; `x` is its left edge.
struct Run {
    style: Style,
    size: f32,
    gray: f32,
    x: f32,
    y: f32,
    text: String,
}

/// A horizontal rule.
struct Rule {
    y: f32,
    width: f32,
}

#[derive(Default)]
struct Page {
    runs: Vec<Run>,
    rules: Vec<Rule>,
}

/// Places text on pages, breaking to a new page when asked.
struct Layout<'a> {
    statement: &'a InvoiceStatement,
    pages: Vec<Page>,
    y: f32,
}

impl<'a> Layout<'a> {
    fn new(statement: &'a InvoiceStatement) -> Self {
        Layout {
            statement,
            pages: vec![Page::default()],
            y: TOP,
        }
    }

    fn page(&mut self) -> &mut Page {
        // `pages` starts with one page and only grows.
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    fn text(&mut self, style: Style, size: f32, x: f32, y: f32, text: &str) {
        self.text_gray(style, size, 0.0, x, y, text);
    }

    fn text_gray(&mut self, style: Style, size: f32, gray: f32, x: f32, y: f32, text: &str) {
        if text.is_empty() {
            return;
        }
        self.page().runs.push(Run {
            style,
            size,
            gray,
            x,
            y,
            text: text.to_owned(),
        });
    }

    fn right(&mut self, style: Style, size: f32, right: f32, y: f32, text: &str) {
        let x = right - font(style).width(text, size);
        self.text(style, size, x, y, text);
    }

    fn rule(&mut self, y: f32, width: f32) {
        self.page().rules.push(Rule { y, width });
    }

    /// A party block from `y` down; returns the baseline below it.
    fn party(&mut self, party: &Party, x: f32, mut y: f32, width: f32) -> f32 {
        self.text_gray(
            Style::Regular,
            SMALL,
            0.4,
            x,
            y,
            &party.heading.to_uppercase(),
        );
        y -= LEADING;
        for line in wrap(&party.name, Style::Bold, BODY + 0.5, width) {
            self.text(Style::Bold, BODY + 0.5, x, y, &line);
            y -= LEADING;
        }
        for line in &party.lines {
            for piece in wrap(line, Style::Regular, BODY, width) {
                self.text(Style::Regular, BODY, x, y, &piece);
                y -= LEADING;
            }
        }
        y
    }

    fn table_heading(&mut self) {
        let [description, quantity, amount] = self.statement.columns.clone();
        let y = self.y;
        self.text(Style::Bold, BODY, MARGIN, y, &description);
        self.text(Style::Bold, BODY, QUANTITY_X, y, &quantity);
        self.right(Style::Bold, BODY, RIGHT, y, &amount);
        self.rule(y - 5.0, 1.0);
        self.y = y - 5.0 - LEADING;
    }

    fn new_page(&mut self) {
        self.pages.push(Page::default());
        let heading = format!("{} {}", self.statement.title, self.statement.number);
        self.text(Style::Bold, BODY, MARGIN, TOP, &heading);
        self.y = TOP - 2.0 * LEADING;
    }

    fn lay_out(mut self) -> Vec<Page> {
        let statement = self.statement;
        // Title and facts on the right, parties on the left.
        self.right(Style::Bold, 20.0, RIGHT, TOP - 14.0, &statement.title);
        let mut facts_y = TOP - 40.0;
        for (label, value) in &statement.facts {
            self.text_gray(Style::Regular, BODY, 0.35, FACTS_X, facts_y, label);
            self.right(Style::Regular, BODY, RIGHT, facts_y, value);
            facts_y -= LEADING;
        }
        let party_width = FACTS_X - MARGIN - 20.0;
        let below_issuer = self.party(&statement.issuer, MARGIN, TOP, party_width);
        let below_customer = self.party(
            &statement.customer,
            MARGIN,
            below_issuer - 14.0,
            party_width,
        );
        self.y = below_customer.min(facts_y) - 24.0;
        self.table_heading();

        for row in &statement.rows {
            let description = wrap(&row.description, Style::Regular, BODY, DESCRIPTION_WIDTH);
            let quantity = wrap(&row.quantity, Style::Regular, BODY, QUANTITY_WIDTH);
            let lines = description.len().max(quantity.len()).max(1);
            let height = lines as f32 * LEADING;
            if self.y - height < BOTTOM {
                self.new_page();
                self.table_heading();
            }
            let y = self.y;
            for (i, line) in description.iter().enumerate() {
                self.text(Style::Regular, BODY, MARGIN, y - i as f32 * LEADING, line);
            }
            for (i, line) in quantity.iter().enumerate() {
                self.text(
                    Style::Regular,
                    BODY,
                    QUANTITY_X,
                    y - i as f32 * LEADING,
                    line,
                );
            }
            self.right(Style::Regular, BODY, RIGHT, y, &row.amount);
            self.rule(y - height + LEADING - 4.0, 0.3);
            self.y = y - height - 2.0;
        }

        let notes: Vec<String> = statement
            .notes
            .iter()
            .flat_map(|note| wrap(note, Style::Regular, SMALL, RIGHT - MARGIN))
            .collect();
        let needed = 2.0 * LEADING + 12.0 + notes.len() as f32 * (LEADING - 2.0);
        if self.y - needed < BOTTOM {
            self.new_page();
        }
        let y = self.y - 4.0;
        self.rule(y + LEADING - 2.0, 1.0);
        self.text(Style::Bold, BODY + 1.5, MARGIN, y, &statement.total_label);
        self.right(Style::Bold, BODY + 1.5, RIGHT, y, &statement.total);
        let mut y = y - 2.0 * LEADING;
        for note in &notes {
            self.text_gray(Style::Regular, SMALL, 0.35, MARGIN, y, note);
            y -= LEADING - 2.0;
        }

        let count = self.pages.len();
        for index in 0..count {
            let footer = format!(
                "{} · {} {} {} {}",
                statement.number,
                statement.page_word,
                index + 1,
                statement.of_word,
                count
            );
            let x = (PAGE_WIDTH - font(Style::Regular).width(&footer, SMALL)) / 2.0;
            self.pages[index].runs.push(Run {
                style: Style::Regular,
                size: SMALL,
                gray: 0.4,
                x,
                y: 36.0,
                text: footer,
            });
        }
        self.pages
    }
}

/// `text` broken into lines no wider than `width`: at spaces, and inside a
/// word only when the word alone is wider.
fn wrap(text: &str, style: Style, size: f32, width: f32) -> Vec<String> {
    let font = font(style);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let candidate = if line.is_empty() {
            word.to_owned()
        } else {
            format!("{line} {word}")
        };
        if font.width(&candidate, size) <= width {
            line = candidate;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        for c in word.chars() {
            line.push(c);
            if font.width(&line, size) > width && line.chars().count() > 1 {
                line.pop();
                lines.push(std::mem::replace(&mut line, c.to_string()));
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// One embedded font: the glyphs used, renumbered from 1 (0 is `.notdef`).
struct Embedding {
    style: Style,
    /// The original glyph ids used, ascending.
    glyphs: Vec<u16>,
    remapper: GlyphRemapper,
    /// `(new glyph, char)` for the ToUnicode map.
    chars: BTreeSet<(u16, char)>,
}

impl Embedding {
    fn new(style: Style, pages: &[Page]) -> Self {
        let font = font(style);
        let used: BTreeSet<u16> = pages
            .iter()
            .flat_map(|p| &p.runs)
            .filter(|r| r.style == style)
            .flat_map(|r| r.text.chars())
            .map(|c| font.glyph(c))
            .collect();
        let glyphs: Vec<u16> = used.into_iter().collect();
        let remapper = GlyphRemapper::new_from_glyphs_sorted(&glyphs);
        let chars = pages
            .iter()
            .flat_map(|p| &p.runs)
            .filter(|r| r.style == style)
            .flat_map(|r| r.text.chars())
            .filter_map(|c| {
                let glyph = font.glyph(c);
                (glyph != 0).then(|| remapper.get(glyph).map(|g| (g, c)))?
            })
            .collect();
        Embedding {
            style,
            glyphs,
            remapper,
            chars,
        }
    }

    fn encode(&self, text: &str) -> Vec<u8> {
        let font = font(self.style);
        text.chars()
            .flat_map(|c| {
                let glyph = self.remapper.get(font.glyph(c)).unwrap_or(0);
                glyph.to_be_bytes()
            })
            .collect()
    }
}

/// `statement` as a PDF.
pub fn render(statement: &InvoiceStatement) -> Vec<u8> {
    let pages = Layout::new(statement).lay_out();
    let embeddings = [
        Embedding::new(Style::Regular, &pages),
        Embedding::new(Style::Bold, &pages),
    ];

    let mut next = 1;
    let mut alloc = || {
        let id = Ref::new(next);
        next += 1;
        id
    };
    let catalog_id = alloc();
    let page_tree_id = alloc();
    let info_id = alloc();
    let font_ids: Vec<[Ref; 5]> = embeddings
        .iter()
        .map(|_| [alloc(), alloc(), alloc(), alloc(), alloc()])
        .collect();
    let page_ids: Vec<(Ref, Ref)> = pages.iter().map(|_| (alloc(), alloc())).collect();

    let mut pdf = Pdf::new();
    pdf.catalog(catalog_id).pages(page_tree_id);
    pdf.pages(page_tree_id)
        .kids(page_ids.iter().map(|(page, _)| *page))
        .count(i32::try_from(pages.len()).unwrap_or(i32::MAX));
    let title = format!("{} {}", statement.title, statement.number);
    pdf.document_info(info_id)
        .title(TextStr(&title))
        .producer(TextStr("billing"));

    for (embedding, [type0_id, cid_id, descriptor_id, file_id, cmap_id]) in
        embeddings.iter().zip(&font_ids)
    {
        write_font(
            &mut pdf,
            embedding,
            [*type0_id, *cid_id, *descriptor_id, *file_id, *cmap_id],
        );
    }

    for (page, (page_id, content_id)) in pages.iter().zip(&page_ids) {
        let mut content = Content::new();
        content.set_stroke_gray(0.55);
        for rule in &page.rules {
            content
                .set_line_width(rule.width)
                .move_to(MARGIN, rule.y)
                .line_to(RIGHT, rule.y)
                .stroke();
        }
        for run in &page.runs {
            let (name, embedding) = match run.style {
                Style::Regular => (Name(b"F1"), &embeddings[0]),
                Style::Bold => (Name(b"F2"), &embeddings[1]),
            };
            content
                .set_fill_gray(run.gray)
                .begin_text()
                .set_font(name, run.size)
                .next_line(run.x, run.y)
                .show(Str(&embedding.encode(&run.text)))
                .end_text();
        }
        let content = deflate(&content.finish());
        pdf.stream(*content_id, &content)
            .filter(Filter::FlateDecode);
        let mut page_writer = pdf.page(*page_id);
        page_writer
            .parent(page_tree_id)
            .media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT))
            .contents(*content_id);
        let mut resources = page_writer.resources();
        let mut fonts = resources.fonts();
        fonts.pair(Name(b"F1"), font_ids[0][0]);
        fonts.pair(Name(b"F2"), font_ids[1][0]);
        fonts.finish();
        resources.finish();
        page_writer.finish();
    }
    pdf.finish()
}

fn write_font(pdf: &mut Pdf, embedding: &Embedding, ids: [Ref; 5]) {
    let [type0_id, cid_id, descriptor_id, file_id, cmap_id] = ids;
    let font = font(embedding.style);
    let base = match embedding.style {
        Style::Regular => "BILLAA+DejaVuSans",
        Style::Bold => "BILLAB+DejaVuSans-Bold",
    };
    let base_name = Name(base.as_bytes());
    let system_info = SystemInfo {
        registry: Str(b"Adobe"),
        ordering: Str(b"Identity"),
        supplement: 0,
    };
    pdf.type0_font(type0_id)
        .base_font(base_name)
        .encoding_predefined(Name(b"Identity-H"))
        .descendant_font(cid_id)
        .to_unicode(cmap_id);

    let widths: Vec<f32> = embedding
        .remapper
        .remapped_gids()
        .map(|old| font.advance(old) * 1000.0 / font.units_per_em)
        .collect();
    let mut cid = pdf.cid_font(cid_id);
    cid.subtype(CidFontType::Type2)
        .base_font(base_name)
        .system_info(system_info)
        .font_descriptor(descriptor_id)
        .default_width(0.0)
        .cid_to_gid_map_predefined(Name(b"Identity"));
    cid.widths().consecutive(0, widths);
    cid.finish();

    let bbox = font.face.global_bounding_box();
    pdf.font_descriptor(descriptor_id)
        .name(base_name)
        .flags(FontFlags::SYMBOLIC)
        .bbox(Rect::new(
            font.scaled(bbox.x_min),
            font.scaled(bbox.y_min),
            font.scaled(bbox.x_max),
            font.scaled(bbox.y_max),
        ))
        .italic_angle(0.0)
        .ascent(font.scaled(font.face.ascender()))
        .descent(font.scaled(font.face.descender()))
        .cap_height(font.scaled(font.face.capital_height().unwrap_or(font.face.ascender())))
        .stem_v(if embedding.style == Style::Bold {
            140.0
        } else {
            80.0
        })
        .font_file2(file_id);

    let subset = compressed_subset(font, embedding);
    pdf.stream(file_id, &subset).filter(Filter::FlateDecode);

    let mut cmap = pdf_writer::types::UnicodeCmap::new(Name(b"Custom"), system_info);
    for (glyph, c) in &embedding.chars {
        cmap.pair(*glyph, *c);
    }
    let cmap = deflate(&cmap.finish());
    pdf.cmap(cmap_id, &cmap).filter(Filter::FlateDecode);
}

/// Compressed font subsets most recently made, by style and glyph set: the
/// invoices of one month share most of their glyphs (the labels, the
/// digits, the issuer), and subsetting and compressing a font was most of
/// a document's rendering time. The same glyphs give the same bytes, so
/// the cache changes no document.
struct SubsetCache {
    subsets: HashMap<(bool, Vec<u16>), Arc<Vec<u8>>>,
    /// Keys in insertion order, the oldest evicted first.
    order: VecDeque<(bool, Vec<u16>)>,
}

/// Subsets the cache keeps (each a few KB).
const SUBSET_CACHE_ENTRIES: usize = 256;

static SUBSETS: LazyLock<Mutex<SubsetCache>> = LazyLock::new(|| {
    Mutex::new(SubsetCache {
        subsets: HashMap::new(),
        order: VecDeque::new(),
    })
});

/// `embedding`'s glyphs of `font` as a compressed TrueType subset.
fn compressed_subset(font: &Font, embedding: &Embedding) -> Arc<Vec<u8>> {
    let key = (embedding.style == Style::Bold, embedding.glyphs.clone());
    // A poisoned cache still holds sound entries.
    let cached = SUBSETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .subsets
        .get(&key)
        .cloned();
    if let Some(subset) = cached {
        return subset;
    }
    // The embedded fonts are fixed and every rendering test subsets them;
    // were it ever to fail, the text would still extract (ToUnicode) and a
    // viewer would show it in a substitute font.
    let subset = subsetter::subset(font.data, 0, &embedding.remapper).unwrap_or_default();
    let subset = Arc::new(deflate(&subset));
    let mut cache = SUBSETS.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.subsets.contains_key(&key) {
        if cache.order.len() >= SUBSET_CACHE_ENTRIES
            && let Some(oldest) = cache.order.pop_front()
        {
            cache.subsets.remove(&oldest);
        }
        cache.order.push_back(key.clone());
        cache.subsets.insert(key, subset.clone());
    }
    subset
}

/// zlib at its fastest level: at a month's close every invoice is
/// rendered, and level 6 made documents a fifth smaller at half the rate
/// (BENCHMARKS.md, "Invoice delivery").
fn deflate(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(data, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::StatementRow;
    use crate::domain::model::Language;

    fn statement(rows: usize) -> InvoiceStatement {
        let party = |name: &str| Party {
            heading: "From".into(),
            name: name.into(),
            lines: vec!["Street 1".into(), "City".into()],
        };
        InvoiceStatement {
            language: Language::En,
            title: "Invoice".into(),
            number: "INV-1".into(),
            facts: vec![("Invoice number".into(), "INV-1".into())],
            period: "November 2026".into(),
            issuer: party("Issuer"),
            customer: party("Customer"),
            columns: ["Description".into(), "Quantity".into(), "Amount".into()],
            rows: (0..rows)
                .map(|i| StatementRow {
                    // Every seventh description wraps onto a second line.
                    description: if i % 7 == 0 {
                        format!("row {i} {}", "with a long description ".repeat(4))
                    } else {
                        format!("row {i}")
                    },
                    quantity: "1 call".into(),
                    amount: format!("USD {i}.00"),
                })
                .collect(),
            total_label: "Total".into(),
            total: "USD 9.99".into(),
            notes: vec!["A note.".into()],
            page_word: "Page".into(),
            of_word: "of".into(),
        }
    }

    #[test]
    fn five_hundred_rows_break_across_pages_each_row_once_within_the_margins() {
        let statement = statement(500);
        let pages = Layout::new(&statement).lay_out();
        assert!(pages.len() > 10, "{} pages", pages.len());
        for (index, page) in pages.iter().enumerate() {
            let footer = format!("INV-1 · Page {} of {}", index + 1, pages.len());
            assert!(page.runs.iter().any(|r| r.text == footer), "page {index}");
            assert!(
                page.runs.iter().any(|r| r.text == "Description"),
                "the table heading is on page {index}"
            );
            for run in page.runs.iter().filter(|r| r.text != footer) {
                assert!(
                    run.y >= BOTTOM - LEADING,
                    "{} at {} on page {index}",
                    run.text,
                    run.y
                );
                assert!(
                    run.x >= MARGIN - 0.01 && run.x <= RIGHT,
                    "{} at x {}",
                    run.text,
                    run.x
                );
            }
        }
        for i in 0..500 {
            let amount = format!("USD {i}.00");
            let placed = pages
                .iter()
                .flat_map(|p| &p.runs)
                .filter(|r| r.text == amount)
                .count();
            assert_eq!(placed, 1, "{amount}");
        }
        let last = pages.last().unwrap();
        assert!(last.runs.iter().any(|r| r.text == "USD 9.99"));
    }

    #[test]
    fn a_cached_font_subset_is_the_subset_made_anew() {
        let mut statement = statement(3);
        // Glyphs no other test renders, so the first lookup misses.
        statement.customer.name = "Ǟǟ Ǡǡ Ǣǣ".into();
        let pages = Layout::new(&statement).lay_out();
        for style in [Style::Regular, Style::Bold] {
            let embedding = Embedding::new(style, &pages);
            let font = font(style);
            let anew = deflate(&subsetter::subset(font.data, 0, &embedding.remapper).unwrap());
            assert_eq!(
                *compressed_subset(font, &embedding),
                anew,
                "{style:?}, made"
            );
            assert_eq!(
                *compressed_subset(font, &embedding),
                anew,
                "{style:?}, cached"
            );
        }
    }

    #[test]
    fn wrapping_keeps_every_word_and_fits_the_width() {
        let text =
            "Calls, tariff a-very-long-tariff-name-without-any-spaces-at-all-to-break-at and more";
        let lines = wrap(text, Style::Regular, BODY, 120.0);
        assert!(lines.len() > 2);
        for line in &lines {
            assert!(font(Style::Regular).width(line, BODY) <= 120.0, "{line}");
        }
        let rejoined: String = lines.concat().split_whitespace().collect();
        assert_eq!(rejoined, text.split_whitespace().collect::<String>());
    }
}
