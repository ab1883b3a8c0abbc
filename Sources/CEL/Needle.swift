/// A substring to look for in code points, found in time linear in the text (Knuth–Morris–Pratt),
/// so `indexOf`, `replace`, `split` and `contains` cost O(text + needle) whatever the input.
struct Needle {
    let scalars: [Unicode.Scalar]
    /// `border[i]`: length of the longest proper border of `scalars[0...i]`.
    private let border: [Int]

    init(_ scalars: [Unicode.Scalar]) {
        self.scalars = scalars
        var border = [Int](repeating: 0, count: scalars.count)
        var length = 0
        var i = 1
        while i < scalars.count {
            if scalars[i] == scalars[length] {
                length += 1
                border[i] = length
                i += 1
            } else if length > 0 {
                length = border[length - 1]
            } else {
                border[i] = 0
                i += 1
            }
        }
        self.border = border
    }

    var isEmpty: Bool { scalars.isEmpty }
    var count: Int { scalars.count }

    /// The first position at or after `start` where the needle begins in `text`, or nil.
    func first(in text: [Unicode.Scalar], from start: Int = 0) -> Int? {
        if scalars.isEmpty { return start <= text.count ? start : nil }
        var matched = 0
        var i = max(0, start)
        while i < text.count {
            if text[i] == scalars[matched] {
                matched += 1
                i += 1
                if matched == scalars.count { return i - matched }
            } else if matched > 0 {
                matched = border[matched - 1]
            } else {
                i += 1
            }
        }
        return nil
    }

    /// Every non-overlapping occurrence, left to right, at most `limit` (negative: all).
    func occurrences(in text: [Unicode.Scalar], limit: Int = -1) -> [Int] {
        guard !scalars.isEmpty else { return [] }
        var found: [Int] = []
        var from = 0
        while limit < 0 || found.count < limit, let position = first(in: text, from: from) {
            found.append(position)
            from = position + scalars.count
        }
        return found
    }
}
