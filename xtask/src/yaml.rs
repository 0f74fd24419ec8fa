//! YAML with line numbers: a small tree built from yaml-rust2's events.
//!
//! Aliases share their anchor's node (no copy), and every walk over the tree
//! spends from a node budget, so an alias bomb ("billion laughs") is an
//! error instead of a hang.

use std::collections::HashMap;
use std::rc::Rc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug)]
pub enum Node {
    Scalar(String, usize),
    Seq(Vec<Rc<Node>>, usize),
    Map(Vec<(Rc<Node>, Rc<Node>)>, usize),
}

impl Node {
    /// 1-based line where the node starts.
    pub fn line(&self) -> usize {
        match self {
            Node::Scalar(_, l) | Node::Seq(_, l) | Node::Map(_, l) => *l,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> &[Rc<Node>] {
        match self {
            Node::Seq(items, _) => items,
            _ => &[],
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self, Node::Map(..))
    }

    /// The value under `key` in a mapping, honouring `<<` merge keys.
    pub fn get(&self, key: &str) -> Option<&Rc<Node>> {
        let Node::Map(entries, _) = self else {
            return None;
        };
        if let Some((_, v)) = entries.iter().find(|(k, _)| k.as_str() == Some(key)) {
            return Some(v);
        }
        entries
            .iter()
            .filter(|(k, _)| k.as_str() == Some("<<"))
            .find_map(|(_, v)| match &**v {
                Node::Map(..) => v.get(key),
                Node::Seq(items, _) => items.iter().find_map(|m| m.get(key)),
                _ => None,
            })
    }

    /// A scalar under `key`.
    pub fn str_at(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|n| n.as_str())
    }

    pub fn entries(&self) -> &[(Rc<Node>, Rc<Node>)] {
        match self {
            Node::Map(entries, _) => entries,
            _ => &[],
        }
    }
}

/// A YAML problem at a line.
#[derive(Debug, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// Most nodes a document may expand to through aliases.
pub const NODE_BUDGET: usize = 1_000_000;

enum Open {
    Seq(Vec<Rc<Node>>, usize, usize),
    Map(Vec<Rc<Node>>, usize, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    docs: Vec<Rc<Node>>,
    anchors: HashMap<usize, Rc<Node>>,
    error: Option<YamlError>,
}

impl Builder {
    fn push(&mut self, node: Rc<Node>, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            Some(Open::Seq(items, _, _)) | Some(Open::Map(items, _, _)) => items.push(node),
            None => self.docs.push(node),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line().max(1);
        match ev {
            Event::Scalar(value, _, anchor, _) => {
                self.push(Rc::new(Node::Scalar(value, line)), anchor)
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(Vec::new(), line, anchor)),
            Event::MappingStart(anchor, _) => self.stack.push(Open::Map(Vec::new(), line, anchor)),
            Event::SequenceEnd => {
                if let Some(Open::Seq(items, l, anchor)) = self.stack.pop() {
                    self.push(Rc::new(Node::Seq(items, l)), anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Open::Map(items, l, anchor)) = self.stack.pop() {
                    let mut entries = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        entries.push((k, v));
                    }
                    self.push(Rc::new(Node::Map(entries, l)), anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push(node, 0),
                None => {
                    self.error = Some(YamlError {
                        line,
                        col: mark.col() + 1,
                        message: "alias to an unknown anchor".into(),
                    })
                }
            },
            _ => {}
        }
    }
}

/// Parses every document in `text`. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Rc<Node>>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        line: e.marker().line().max(1),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    let docs: Vec<Rc<Node>> = builder
        .docs
        .into_iter()
        .filter(|d| !matches!(&**d, Node::Scalar(s, _) if s.is_empty() || s == "~"))
        .collect();
    for doc in &docs {
        let mut budget = NODE_BUDGET;
        if !within_budget(doc, &mut budget) {
            return Err(YamlError {
                line: doc.line(),
                col: 1,
                message: format!(
                    "the document expands to more than {NODE_BUDGET} nodes through aliases (a YAML bomb?); \
                     refusing to read it"
                ),
            });
        }
    }
    Ok(docs)
}

fn within_budget(node: &Node, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match node {
        Node::Scalar(..) => true,
        Node::Seq(items, _) => items.iter().all(|n| within_budget(n, budget)),
        Node::Map(entries, _) => entries
            .iter()
            .all(|(k, v)| within_budget(k, budget) && within_budget(v, budget)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_line_numbers() {
        let docs = parse_documents("a: 1\nb:\n  c: two\n---\nx: [1, 2]\n").unwrap();
        assert_eq!(docs.len(), 2);
        let b = docs[0].get("b").unwrap();
        assert_eq!(b.get("c").unwrap().line(), 3);
        assert_eq!(b.str_at("c"), Some("two"));
        assert_eq!(docs[1].get("x").unwrap().as_seq().len(), 2);
    }

    #[test]
    fn aliases_and_merge_keys_resolve() {
        let docs =
            parse_documents("base: &b\n  key: k1\nuse:\n  <<: *b\n  other: o\nref: *b\n").unwrap();
        assert_eq!(docs[0].get("use").unwrap().str_at("key"), Some("k1"));
        assert_eq!(docs[0].get("ref").unwrap().str_at("key"), Some("k1"));
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            bomb.push_str(&format!("{n}: &{n} [{refs}]\n", n = w[1]));
        }
        let err = parse_documents(&bomb).unwrap_err();
        assert!(err.message.contains("YAML bomb"), "{err}");
    }

    #[test]
    fn malformed_yaml_reports_position() {
        let err = parse_documents("a: 1\nb: [unclosed\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
        let err = parse_documents("a: *nope\n").unwrap_err();
        assert!(
            err.message.contains("unknown anchor") || err.message.contains("unknown"),
            "{err}"
        );
    }
}
