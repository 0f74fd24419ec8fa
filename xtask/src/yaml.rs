//! YAML with line numbers: a small tree built from yaml-rust2's events.
//! Aliases share their anchor's node; an alias bomb is an error, not a hang.

use std::collections::HashMap;
use std::rc::Rc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug)]
pub(crate) enum Node {
    Scalar(String, usize),
    Seq(Vec<Rc<Node>>, usize),
    Map(Vec<(Rc<Node>, Rc<Node>)>, usize),
}

impl Node {
    /// 1-based line where the node starts.
    pub(crate) fn line(&self) -> usize {
        match self {
            Node::Scalar(_, l) | Node::Seq(_, l) | Node::Map(_, l) => *l,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        let Node::Scalar(s, _) = self else { return None };
        Some(s)
    }

    pub(crate) fn as_seq(&self) -> &[Rc<Node>] {
        let Node::Seq(items, _) = self else { return &[] };
        items
    }

    /// The value under `key` in a mapping, honouring `<<` merge keys.
    pub(crate) fn get(&self, key: &str) -> Option<&Rc<Node>> {
        let Node::Map(entries, _) = self else { return None };
        if let Some((_, v)) = entries.iter().find(|(k, _)| k.as_str() == Some(key)) {
            return Some(v);
        }
        let merged = entries.iter().filter(|(k, _)| k.as_str() == Some("<<"));
        merged.map(|(_, v)| v).find_map(|v| match &**v {
            Node::Map(..) => v.get(key),
            Node::Seq(items, _) => items.iter().find_map(|m| m.get(key)),
            _ => None,
        })
    }

    pub(crate) fn str_at(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|n| n.as_str())
    }

    pub(crate) fn entries(&self) -> &[(Rc<Node>, Rc<Node>)] {
        let Node::Map(entries, _) = self else { return &[] };
        entries
    }
}

/// A YAML problem at a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct YamlError {
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
pub(crate) const NODE_BUDGET: usize = 1_000_000;

/// A sequence or mapping being read: its items (a mapping's keys and values
/// alternate), line and anchor.
enum Open {
    Seq(Vec<Rc<Node>>, usize, usize),
    Map(Vec<Rc<Node>>, usize, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    docs: Vec<Rc<Node>>,
    anchors: HashMap<usize, Rc<Node>>,
}

impl Builder {
    fn push(&mut self, node: Rc<Node>, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            Some(Open::Seq(items, ..) | Open::Map(items, ..)) => items.push(node),
            None => self.docs.push(node),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
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
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone()));
                    self.push(Rc::new(Node::Map(pairs.collect(), l)), anchor);
                }
            }
            // The parser refuses an alias to an unknown anchor itself.
            Event::Alias(id) => {
                if let Some(node) = self.anchors.get(&id).cloned() {
                    self.push(node, 0);
                }
            }
            _ => {}
        }
    }
}

/// Parses every document in `text`. Empty documents are skipped.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Rc<Node>>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        line: e.marker().line().max(1),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    let empty = |d: &Rc<Node>| matches!(&**d, Node::Scalar(s, _) if s.is_empty() || s == "~");
    let docs: Vec<Rc<Node>> = builder.docs.into_iter().filter(|d| !empty(d)).collect();
    if let Some(bomb) = docs.iter().find(|doc| !within_budget(doc, &mut { NODE_BUDGET })) {
        let message = format!(
            "the document expands to more than {NODE_BUDGET} nodes through aliases (a YAML bomb?); \
             refusing to read it"
        );
        return Err(YamlError { line: bomb.line(), col: 1, message });
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
        Node::Map(entries, _) => {
            entries.iter().all(|(k, v)| within_budget(k, budget) && within_budget(v, budget))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merge keys, aliases and bombs are guarded by it/bad_input.rs.
    #[test]
    fn keeps_line_numbers_and_names_unknown_anchors() {
        let docs = parse_documents("a: 1\nb:\n  c: two\n---\nx: [1, 2]\n").unwrap();
        assert_eq!(docs.len(), 2);
        let b = docs[0].get("b").unwrap();
        assert_eq!((b.get("c").unwrap().line(), b.str_at("c")), (3, Some("two")));
        assert_eq!(docs[1].get("x").unwrap().as_seq().len(), 2);
        let err = parse_documents("a: 1\nb: *nope\n").unwrap_err();
        assert_eq!(err.to_string(), "2:4: while parsing node, found unknown anchor");
    }
}
