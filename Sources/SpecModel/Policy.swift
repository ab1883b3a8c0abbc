/// A CEL policy from `policies/*.yaml` on the protected branch.
public struct Policy: Sendable, Equatable {
    public enum Action: String, Sendable, CaseIterable { case deny, warn, audit }

    public struct Rule: Sendable, Equatable {
        public var expr: String
        public var message: String
        /// Where the expression starts (`path:line:col` of its first character), for errors.
        public var line: Int
        public var column: Int
        public init(expr: String, message: String, line: Int, column: Int) {
            self.expr = expr
            self.message = message
            self.line = line
            self.column = column
        }
    }

    public var name: String
    public var file: String
    /// CEL; nil applies the policy to every environment.
    public var match: Rule?
    public var action: Action
    public var rules: [Rule]

    public init(name: String, file: String, match: Rule?, action: Action, rules: [Rule]) {
        self.name = name
        self.file = file
        self.match = match
        self.action = action
        self.rules = rules
    }
}
