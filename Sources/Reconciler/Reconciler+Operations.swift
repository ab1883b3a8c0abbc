import Foundation

extension Reconciler {
    /// Records the applies and teardowns finished since the last look, in the order they finished.
    func recordFinished(_ summary: inout PassSummary) {
        for (ticket, result) in operations.finished() {
            guard let completion = completions.removeValue(forKey: ticket) else { continue }
            do {
                try completion(result, &summary)
            } catch {
                // The driver's work is done; what could not be recorded is found again (the record
                // still says Applying or Destroying) and redone, as after a crash.
                logger.error("could not record a finished operation", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Waits for every submitted operation and records it.
    func finishOperations(_ summary: inout PassSummary) {
        recordFinished(&summary)
        while !completions.isEmpty {
            operations.waitForFinish(seconds: 0.5)
            recordFinished(&summary)
        }
    }
}
