//! Input limits, checked before the YAML parser runs: a repository is written by people,
//! but a hostile or broken file must not cost minutes or gigabytes. libyaml's cost grows
//! with the square of the nesting depth (a few hundred thousand `[` take minutes) and a
//! parsed value takes ~50 times the bytes of its text.

/// The largest repository file read, in bytes (4 MiB; a Kubernetes object is at most
/// 1.5 MiB in etcd, and a repository file holds a few of them).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The deepest nesting of collections (mappings and sequences, block or flow) in one
/// document. The kinds nest at most about ten levels.
pub const MAX_DEPTH: usize = 64;

/// The most instances a `replicas:` function may ask for: each is a Deployment. Also the
/// `maximum` of `spec.instances.replicas` in `schema/function.json`.
pub const MAX_REPLICAS: u32 = 1000;

/// The first line (1-based) at which `text` nests collections deeper than `max`, and the
/// depth found there: a linear scan that over-approximates the parser's depth a little
/// (block indentation levels + compact `- `/`? ` markers + open flow brackets outside quoted
/// scalars and comments), so that deep input is refused before libyaml sees it.
pub fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut line = 1usize;
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // The block depth at which the open flow collection started.
    let mut flow_base = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        // Start of a line.
        let start = i;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let indent = i - start;
        let blank = i >= bytes.len() || matches!(bytes[i], b'\n' | b'\r' | b'#');
        let mut depth_here = flow_base + flow;
        if flow == 0 && !blank {
            if bytes[i..].starts_with(b"---") || bytes[i..].starts_with(b"...") {
                indents.clear();
            }
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // Compact nested entries on one line: `- - - x`, `? ? x`.
            let mut markers = 0usize;
            while i + 1 < bytes.len()
                && matches!(bytes[i], b'-' | b'?')
                && matches!(bytes[i + 1], b' ' | b'\t')
            {
                markers += 1;
                i += 2;
                while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
                    i += 1;
                }
            }
            depth_here = indents.len() + markers;
        }
        if depth_here > max {
            return Some((line, depth_here));
        }
        // The rest of the line: flow brackets outside quotes and comments.
        if flow == 0 {
            flow_base = depth_here;
        }
        let mut prev: Option<u8> = (flow > 0).then_some(b',');
        let mut after_space = true;
        while i < bytes.len() && bytes[i] != b'\n' {
            let c = bytes[i];
            let node_start = after_space
                && matches!(prev, None | Some(b'-' | b':' | b'?' | b',' | b'[' | b'{'))
                || matches!(prev, Some(b'[' | b'{' | b','));
            match c {
                b'#' if after_space => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                    break;
                }
                b'"' | b'\'' if node_start || flow > 0 && matches!(prev, Some(b':')) => {
                    // A quoted scalar, possibly over several lines.
                    i += 1;
                    while i < bytes.len() {
                        match bytes[i] {
                            b'\\' if c == b'"' => i += 1,
                            b'\'' if c == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                            q if q == c => break,
                            b'\n' => line += 1,
                            _ => {}
                        }
                        i += 1;
                    }
                }
                b'[' | b'{' if flow > 0 || node_start => {
                    flow += 1;
                    if flow_base + flow > max {
                        return Some((line, flow_base + flow));
                    }
                }
                b']' | b'}' if flow > 0 => flow -= 1,
                _ => {}
            }
            if !matches!(c, b' ' | b'\t') {
                prev = Some(c);
            }
            after_space = matches!(c, b' ' | b'\t');
            i += 1;
        }
        if i < bytes.len() {
            line += 1;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_documents_pass() {
        let text = "apiVersion: v1\nkind: Function # [ not a bracket\nmetadata: {name: a, labels: {x: \"[{\"}}\nspec:\n  env:\n  - name: A\n    value: don't [stop\n  - {name: B, value: '[[['}\n  ports: [{containerPort: 1}]\n---\nkind: X\n";
        assert_eq!(too_deep(text, 6), None);
    }

    #[test]
    fn deep_flow_block_and_compact_nesting_are_found() {
        let flow = "a: ".to_owned() + &"[".repeat(100_000);
        assert_eq!(too_deep(&flow, MAX_DEPTH), Some((1, MAX_DEPTH + 1)));
        let multi = "x: 1\ny:\n".to_owned() + &"{\n".repeat(200);
        assert_eq!(
            too_deep(&multi, MAX_DEPTH),
            Some((3 + MAX_DEPTH - 1, MAX_DEPTH + 1))
        );
        let compact = "- ".repeat(100) + "x\n";
        assert!(too_deep(&compact, MAX_DEPTH).is_some());
        let mut block = String::new();
        for d in 0..100 {
            block.push_str(&" ".repeat(d));
            block.push_str("k:\n");
        }
        assert_eq!(
            too_deep(&block, MAX_DEPTH),
            Some((MAX_DEPTH + 1, MAX_DEPTH + 1))
        );
    }

    #[test]
    fn replicas_limit_is_the_schemas() {
        let schema: serde_json::Value =
            serde_json::from_str(crate::load::schema::FUNCTION).unwrap();
        let max = schema
            .pointer("/properties/spec/properties/instances/properties/replicas/maximum")
            .and_then(serde_json::Value::as_u64);
        assert_eq!(max, Some(u64::from(MAX_REPLICAS)));
    }
}
