import Foundation

/// Text from a repository (file names, messages) as one terminal line: control characters,
/// escape sequences, line breaks and invisible format characters (bidi overrides) are
/// shown escaped.
public enum Printable {
    public static func line(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar.properties.generalCategory {
            case .control, .lineSeparator, .paragraphSeparator, .format: out += "\\u{\(String(scalar.value, radix: 16))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
