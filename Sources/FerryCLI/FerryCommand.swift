public enum FerryCommand {
    public static func main() async {}
}
