import Foundation

/// Timestamps and durations: parsing, formatting, arithmetic with range checks, calendar fields.
enum Time {
    static let minTimestamp: Int64 = -62_135_596_800          // 0001-01-01T00:00:00Z
    static let maxTimestamp: Int64 = 253_402_300_799          // 9999-12-31T23:59:59Z
    /// Durations are bounded by 64-bit nanoseconds (about 292 years), as in cel-go.
    static let maxDurationSeconds: Int64 = 9_223_372_036

    static func normalize(_ seconds: Int64, _ nanos: Int64) throws -> (Int64, Int32) {
        var s = seconds, n = nanos
        let (carry, rest) = n.quotientAndRemainder(dividingBy: 1_000_000_000)
        let (sum, overflow) = s.addingReportingOverflow(carry)
        if overflow { throw CELError("return error for overflow") }
        s = sum
        n = rest
        if n < 0 && s > 0 { s -= 1; n += 1_000_000_000 }
        if n > 0 && s < 0 { s += 1; n -= 1_000_000_000 }
        return (s, Int32(n))
    }

    static func duration(seconds: Int64, nanos: Int64, plusSeconds: Int64, nanos extra: Int64) throws -> CELValue {
        let (sum, overflow) = seconds.addingReportingOverflow(plusSeconds)
        if overflow { throw CELError("return error for overflow") }
        let (s, n) = try normalize(sum, nanos + extra)
        guard abs(s) <= maxDurationSeconds else { throw CELError("return error for overflow: duration out of range") }
        return .duration(seconds: s, nanos: n)
    }

    static func timestamp(seconds: Int64, nanos: Int64, plusSeconds: Int64, nanos extra: Int64) throws -> CELValue {
        let (sum, overflow) = seconds.addingReportingOverflow(plusSeconds)
        if overflow { throw CELError("return error for overflow") }
        var (s, n) = try normalize(sum, nanos + extra)
        if n < 0 { s -= 1; n += 1_000_000_000 }
        guard s >= minTimestamp, s <= maxTimestamp else { throw CELError("return error for overflow: timestamp out of range") }
        return .timestamp(seconds: s, nanos: n)
    }

    // MARK: Civil calendar (proleptic Gregorian), after Howard Hinnant's algorithms.

    static func civil(fromDays days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }

    static func days(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = month > 2 ? month - 3 : month + 9
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// `2009-02-13T23:31:30.123456789Z` or with a `±HH:MM` offset.
    static func parseTimestamp(_ text: String) throws -> CELValue {
        let bad = CELError("timestamp parse error: '\(text)' is not RFC 3339")
        let chars = Array(text.utf8)
        func number(_ from: Int, _ count: Int) throws -> Int64 {
            guard from + count <= chars.count else { throw bad }
            var value: Int64 = 0
            for c in chars[from..<(from + count)] {
                guard c >= 48 && c <= 57 else { throw bad }
                value = value * 10 + Int64(c - 48)
            }
            return value
        }
        guard chars.count >= 20, chars[4] == 45, chars[7] == 45, chars[10] == 84 || chars[10] == 116, chars[13] == 58, chars[16] == 58 else { throw bad }
        let year = try number(0, 4), month = try number(5, 2), day = try number(8, 2)
        let hour = try number(11, 2), minute = try number(14, 2), second = try number(17, 2)
        guard (1...12).contains(month), day >= 1, day <= 31, hour < 24, minute < 60, second < 61 else { throw bad }
        var index = 19
        var nanos: Int64 = 0
        if index < chars.count, chars[index] == 46 {
            index += 1
            var digits = 0
            while index < chars.count, chars[index] >= 48, chars[index] <= 57 {
                if digits < 9 { nanos = nanos * 10 + Int64(chars[index] - 48) }
                digits += 1
                index += 1
            }
            guard digits > 0 else { throw bad }
            // More than nine digits are cut to nanoseconds (the range must not run backwards).
            for _ in min(digits, 9)..<9 { nanos *= 10 }
        }
        guard index < chars.count else { throw bad }
        var offset: Int64 = 0
        if chars[index] == 90 || chars[index] == 122 {
            index += 1
        } else if chars[index] == 43 || chars[index] == 45 {
            let sign: Int64 = chars[index] == 45 ? -1 : 1
            guard index + 6 == chars.count, chars[index + 3] == 58 else { throw bad }
            let (hours, minutes) = (try number(index + 1, 2), try number(index + 4, 2))
            guard hours <= 23, minutes <= 59 else { throw bad }
            offset = sign * (hours * 3600 + minutes * 60)
            index += 6
        } else {
            throw bad
        }
        guard index == chars.count else { throw bad }
        let seconds = days(year: year, month: month, day: day) * 86400 + hour * 3600 + minute * 60 + second - offset
        guard seconds >= minTimestamp, seconds <= maxTimestamp else { throw CELError("timestamp out of range: \(text)") }
        return .timestamp(seconds: seconds, nanos: Int32(nanos))
    }

    static func formatTimestamp(_ seconds: Int64, _ nanos: Int32) -> String {
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let rest = seconds - days * 86400
        let (y, m, d) = civil(fromDays: days)
        var text = String(format: "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld", y, m, d, rest / 3600, (rest % 3600) / 60, rest % 60)
        if nanos != 0 {
            var fraction = String(format: "%09d", nanos)
            while fraction.hasSuffix("0") { fraction.removeLast() }
            text += "." + fraction
        }
        return text + "Z"
    }

    /// Go-style durations: `1h2m3.5s`, `-1.5h`, `300ms`, `10us`, `5ns`.
    static func parseDuration(_ text: String) throws -> CELValue {
        let bad = CELError("duration parse error: '\(text)'")
        var rest = Substring(text)
        var negative = false
        if rest.hasPrefix("-") { negative = true; rest = rest.dropFirst() } else if rest.hasPrefix("+") { rest = rest.dropFirst() }
        if rest == "0" { return .duration(seconds: 0, nanos: 0) }
        guard !rest.isEmpty else { throw bad }
        let units: [(String, Int64)] = [("ns", 1), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
                                        ("m", 60_000_000_000), ("h", 3_600_000_000_000)]
        var seconds: Int64 = 0, nanos: Int64 = 0
        while !rest.isEmpty {
            var whole = "", fraction = ""
            while let c = rest.first, c.isASCII, c.isNumber { whole.append(c); rest = rest.dropFirst() }
            if rest.first == "." {
                rest = rest.dropFirst()
                while let c = rest.first, c.isASCII, c.isNumber { fraction.append(c); rest = rest.dropFirst() }
            }
            guard !(whole.isEmpty && fraction.isEmpty) else { throw bad }
            guard let unit = units.first(where: { rest.hasPrefix($0.0) && !($0.0 == "m" && rest.hasPrefix("ms")) }) else { throw bad }
            rest = rest.dropFirst(unit.0.count)
            guard whole.count <= 18, let w = whole.isEmpty ? 0 : Int64(whole) else { throw CELError("duration out of range: \(text)") }
            // Whole units, exactly, split into seconds and nanoseconds so nothing overflows.
            let perSecond: Int64 = 1_000_000_000
            let (unitSeconds, unitNanos) = unit.1.quotientAndRemainder(dividingBy: perSecond)
            let (a, o1) = w.multipliedReportingOverflow(by: unitSeconds)
            let (b, o2) = seconds.addingReportingOverflow(a)
            guard !o1, !o2 else { throw CELError("duration out of range: \(text)") }
            seconds = b
            let (c, o3) = w.multipliedReportingOverflow(by: unitNanos)
            guard !o3 else { throw CELError("duration out of range: \(text)") }
            nanos += c % perSecond
            seconds += c / perSecond
            if !fraction.isEmpty, let f = Double("0." + fraction) {
                let extra = f * Double(unit.1)
                seconds += Int64(extra / 1e9)
                nanos += Int64((extra - Double(Int64(extra / 1e9)) * 1e9).rounded())
            }
            guard abs(seconds) <= maxDurationSeconds + 1 else { throw CELError("duration out of range: \(text)") }
        }
        let (s, n) = try normalize(negative ? -seconds : seconds, negative ? -nanos : nanos)
        guard abs(s) <= maxDurationSeconds else { throw CELError("duration out of range: \(text)") }
        return .duration(seconds: s, nanos: n)
    }

    static func formatDuration(_ seconds: Int64, _ nanos: Int32) -> String {
        if nanos == 0 { return "\(seconds)s" }
        let negative = seconds < 0 || nanos < 0
        var fraction = String(format: "%09d", abs(Int(nanos)))
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return "\(negative ? "-" : "")\(abs(seconds)).\(fraction)s"
    }

    /// The UTC offset in seconds for a time zone name (`America/New_York`, `UTC`) or `±HH:MM`.
    static func offset(_ zone: String, at seconds: Int64) throws -> Int64 {
        if let first = zone.first, first == "+" || first == "-" || first.isNumber {
            // ±HH:MM with HH at most 23 and MM at most 59: a zone is never a day or more away.
            let parts = (first.isNumber ? Substring(zone) : zone.dropFirst()).split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, (1...2).contains(parts[0].count), parts[1].count == 2,
                  parts.allSatisfy({ $0.allSatisfy { $0.isASCII && $0.isNumber } }),
                  let h = Int64(parts[0]), let m = Int64(parts[1]), h <= 23, m <= 59 else {
                throw CELError("invalid time zone '\(zone.prefix(40))': give an IANA name (America/New_York) or an offset ±HH:MM within ±23:59")
            }
            return (first == "-" ? -1 : 1) * (h * 3600 + m * 60)
        }
        guard let timeZone = TimeZone(identifier: zone) else { throw CELError("unknown time zone '\(zone)'") }
        return Int64(timeZone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(seconds))))
    }
}
