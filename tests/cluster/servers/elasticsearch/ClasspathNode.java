import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.lucene.analysis.core.WhitespaceTokenizer;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.index.analysis.PreConfiguredTokenizer;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.AnalysisPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.reindex.ReindexPlugin;
import org.elasticsearch.transport.Netty4Plugin;

/**
 * One Elasticsearch 7.17 node whose modules are classes on the classpath, not
 * plugin folders of a distribution: Maven Central serves the server jar and a
 * few modules but no tarball. Node's protected constructor takes plugin
 * classes, as the test framework's MockNode does. Settings come from
 * $home/config/elasticsearch.yml.
 *   java -cp 'lib/*:classes' ClasspathNode HOME
 */
public final class ClasspathNode extends Node {
    private static final List<Class<? extends Plugin>> MODULES =
            List.of(Netty4Plugin.class, ReindexPlugin.class, WhitespaceTokenizerPlugin.class);

    /**
     * The whitespace tokenizer of mailyard's analyzer. It lives in the
     * analysis-common module, which is not published for 7.x; Lucene's own
     * tokenizer is on the classpath, and the lowercase filter is in core.
     */
    public static final class WhitespaceTokenizerPlugin extends Plugin implements AnalysisPlugin {
        @Override
        public List<PreConfiguredTokenizer> getPreConfiguredTokenizers() {
            return List.of(
                    PreConfiguredTokenizer.singleton("whitespace", WhitespaceTokenizer::new));
        }
    }

    private ClasspathNode(Environment environment) {
        super(environment, MODULES, true);
    }

    public static void main(String[] args) throws Exception {
        Path home = Paths.get(args[0]).toAbsolutePath();
        Settings settings = Settings.builder().put("path.home", home.toString()).build();
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
                settings, Map.of(), home.resolve("config"), () -> "mailyard-node");
        Node node = new ClasspathNode(environment);
        CountDownLatch stopped = new CountDownLatch(1);
        // SIGTERM (elasticsearch.sh stop) closes the node cleanly: shards flushed, lock released.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            }
            stopped.countDown();
        }, "node-shutdown"));
        node.start();
        stopped.await();
    }
}
